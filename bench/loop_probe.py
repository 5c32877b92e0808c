"""Part 3's stall probe, a process of its own: `python -m bench.loop_probe PORT PATH START END`.

Rule: from START to END (epoch seconds), `GET PATH` every `INTERVAL` seconds (at once when
the answer before came later) over one keep-alive connection, each round trip timed; then
one JSON line on stdout: the requests, the failed ones and the spread of the round trips
(`Spread`, milliseconds). A time when the server's event loop does not turn delays the
request in flight, or the next one to leave, by about that long, less `INTERVAL` at most:
the longest round trip plus `INTERVAL` bounds the loop's longest stall from above. Paced,
so that the probe adds little to the load it measures under; its own process, so that
nothing of the bench's (its GIL, its threads) delays it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from bench.clients import Probe
from bench.stats import Spread

INTERVAL = 0.002  # seconds between two requests sent


def probe(port: int, path: str, start: float, end: float) -> dict[str, object]:
    client = Probe(port)
    client.get("probe", path)  # connected before the clock starts
    time.sleep(max(0.0, start - time.time()))
    round_trips: list[float] = []
    failed = 0
    next_at = time.time()
    try:
        while next_at < end:
            time.sleep(max(0.0, next_at - time.time()))
            sent = time.perf_counter()
            status, _ = client.get("probe", path)
            round_trips.append(time.perf_counter() - sent)
            failed += status != 200
            next_at = max(next_at + INTERVAL, time.time())
    finally:
        client.close()
    return {
        "requests": len(round_trips),
        "failed": failed,
        **asdict(Spread.of_seconds(round_trips)),
    }


def main() -> None:
    port, path, start, end = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(probe(port, path, start, end)), flush=True)


if __name__ == "__main__":
    main()
