-- wrk script: each request carries the Host of a domain drawn at random.
-- BENCH_HOSTS domains named d0.scale .. d{N-1}.scale (N = 1: always d0.scale).
local count = tonumber(os.getenv("BENCH_HOSTS") or "1")

function setup(thread)
  thread:set("seed", math.random(1, 2 ^ 30))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local i = math.random(0, count - 1)
  return wrk.format(nil, nil, { ["Host"] = "d" .. i .. ".scale" })
end

-- BENCH_DELAY_MS (whole milliseconds, as wrk takes them): each connection waits that long
-- after an answer before its next request, so that the load is a steady rate, not all wrk
-- can push (part 3's steady traffic).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then
  function delay()
    return pause
  end
end
