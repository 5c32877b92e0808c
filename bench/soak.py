"""gogeta's soak test: `make soak` (or `python bench/soak.py`), everything on 127.0.0.1.

Minutes of steady traffic at a fixed concurrency while the routing table churns in etcd,
watching for two things: unexpected errors and memory that grows.

- A private etcd (`--enable-v2`), `SOAK_BACKENDS` small gevent.pywsgi backends (each answers
  its own name: bench/soak_backend.py) and gogeta standalone, each on a free loopback port.
- "stable" domains: services whose instances 1 and 2 are never touched. Their instance 3
  churns like the others (added, removed, moved, sometimes to a port where nothing listens,
  stopped, passivated, its `alive` key left to expire), so gogeta must always find one of
  the two started instances, retrying when it meets the dead port: ANY answer but a 200
  there is unexpected.
- "churn" domains: every instance of their services is added, removed, moved, stopped,
  started, passivated (bench/soak_churn.py plays the orchestrator: when gogeta writes
  `expected=started`, it sets `current=starting`, then `started` with `alive`), whole
  services passivated, deleted and re-created, domains deleted and re-created. Every
  status page is expected there; gogeta's own `internal_error` page is not.
- A few requests go to random unknown hostnames (404), as a scanner would send.

`SOAK_CONCURRENCY` client threads (bench/soak_load.py) send GETs (and some POSTs with a
body) over keep-alive connections with `Accept: application/json`, so that a status answer
names its page. A churn thread applies one operation every `SOAK_CHURN_MS`. Unexpected: a
non-200 on a stable domain, a 200 whose body is not a backend's name, an `internal_error`
page, a connection-level error (refused, reset, timeout, broken answer) anywhere, an ERROR
line in gogeta's log, or gogeta's table not matching etcd once the churn stops
(bench/soak_truth.py).

RSS of gogeta (psutil) is read after the warm-up, every 10 s, and at the end. Exit code 1
when anything unexpected happened or RSS grew more than 20 % + 10 MB from warm-up to end.
Results: a table on stdout and in bench/results/runs/ (git-ignored); with SOAK_RECORD=1
also in bench/results/soak.json and soak.md.

Variables: SOAK_MINUTES (2), SOAK_CONCURRENCY (20), SOAK_BACKENDS (4), SOAK_CHURN_MS (100),
SOAK_WARMUP_SECONDS (15), SOAK_SEED (random).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/soak.py` puts bench/ first on sys.path: the checkout instead, so that
    # the package is imported as `bench.*` and none of its modules shadows another.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from types import FrameType  # noqa: E402

from bench.harness import Processes, say  # noqa: E402
from bench.options import SoakOptions  # noqa: E402
from bench.soak_report import write_soak  # noqa: E402
from bench.soak_run import run  # noqa: E402


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    opts = SoakOptions.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="gogeta-soak-"))
    procs = Processes(workdir)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even when started with SIGINT ignored
    say(f"soak: {opts}")
    try:
        result = run(opts, procs)
    except KeyboardInterrupt:
        say(f"interrupted; logs kept in {workdir}")
        return 130
    except Exception:
        say(f"failed; logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()
    text, stems = write_soak(result, SoakOptions.record())
    for stem in stems:
        say(f"written: {stem}.md and .json")
    print(text)
    if result.passed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"FAIL; logs kept in {workdir}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
