"""How late the last of a burst of etcd writes is routed: `python bench/burst_propagation.py`.

Starts an etcd, a backend (`bench/hello.py`) and gogeta (the v2 source), then, per trial,
writes 500 new domains (1,000 writes: `type` and `value`) back to back and measures from
the moment the last write returned to the moment gogeta routes every domain whose write
came last in its thread. Prints each trial and the median, and how often gogeta reloaded.

Options: `--trials N` (default 7), `--threads N` writers (default 1: strictly back to back),
`--gogeta DIR` to measure another checkout of gogeta against the same etcd.

Everything is started through the bench's harness (`bench.harness.Processes`), so it is
stopped however the script ends; the logs are kept, and their directory printed, on failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/burst_propagation.py` puts bench/ first on sys.path: the checkout
    # instead, so that the package is imported as `bench.*` (as in bench/run.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import atexit  # noqa: E402
import functools  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from types import FrameType  # noqa: E402

import etcd  # noqa: E402

from bench.harness import (  # noqa: E402
    BENCH,
    PYTHON,
    ROOT,
    Processes,
    etcd_binary,
    free_port,
    wait_for,
    wait_listening,
)
from bench.servers import Etcd, location, start_gogeta  # noqa: E402

# /__gogeta/routes answers before the table is loaded; until then it may lack a figure.
NOT_YET = (OSError, http.client.HTTPException, ValueError, KeyError)


def routed(port: int, host: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    finally:
        conn.close()


def gone(port: int, host: str) -> bool:
    return not routed(port, host)


def counters(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/__gogeta/routes")
        return dict(json.loads(conn.getresponse().read())["counters"])
    finally:
        conn.close()


def client(server: Etcd) -> etcd.Client:
    """A python-etcd client (v2): the bursts are written through one per writer thread."""
    return etcd.Client(host="127.0.0.1", port=server.port, read_timeout=5)


def trial(server: Etcd, port: int, name: str, threads: int) -> tuple[float, int]:
    """(seconds from the last write to all routed, reloads during the trial)."""
    hosts = [f"d{i}.{name}.burst" for i in range(500)]
    chunks = [hosts[i::threads] for i in range(threads)]
    finished: list[float] = []

    def write(chunk: list[str]) -> None:
        writer = client(server)
        for host in chunk:
            writer.write(f"/domains/{host}/type", "service")
            writer.write(f"/domains/{host}/value", "burst")
        finished.append(time.monotonic())

    before = counters(port)["reloads"]
    workers = [threading.Thread(target=write, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if len(finished) != threads:
        raise RuntimeError("a writer thread failed (its traceback is above)")
    last_write = max(finished)
    pending = [chunk[-1] for chunk in chunks]
    while pending:
        pending = [host for host in pending if not routed(port, host)]
    late = time.monotonic() - last_write
    wait_for(lambda: all(routed(port, h) for h in hosts), 30, "every domain")
    return late, counters(port)["reloads"] - before


def measure(procs: Processes, checkout: Path, trials: int, threads: int) -> None:
    server = Etcd(procs, etcd_binary(), "etcd-burst")
    app_port = free_port()
    app = procs.start("backend", [PYTHON, str(BENCH / "hello.py"), str(app_port)])
    wait_listening(app, app_port, "backend", timeout=20)
    server.put("/services/burst/1/location", location(app_port))
    port = free_port()
    flags = ["-etcdAddress", server.url, "-lastAccessInterval", "3600"]
    start_gogeta(procs, "gogeta-burst", port, flags, checkout=checkout)
    wait_for(lambda: counters(port)["reloads"] >= 2, 10, "gogeta loaded", NOT_YET)
    results = []
    for number in range(trials):
        late, reloads = trial(server, port, f"t{number}", threads)
        results.append(late)
        late_ms = late * 1000
        print(f"trial {number}: routed {late_ms:.0f} ms after the last write, {reloads} reloads")
        client(server).delete("/domains", recursive=True, dir=True)
        last = f"d499.t{number}.burst"
        wait_for(functools.partial(gone, port, last), 10, "the burst deleted")
    print(
        f"median {statistics.median(results) * 1000:.0f} ms,"
        f" max {max(results) * 1000:.0f} ms over {trials} bursts of 1,000 writes"
        f" ({threads} writer thread(s))"
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)  # runs atexit, which stops every process started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gogeta", type=Path, default=ROOT)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gogeta-burst-"))
    procs = Processes(workdir)
    atexit.register(procs.stop_all)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        measure(procs, args.gogeta.resolve(), args.trials, args.threads)
    except Exception:
        procs.stop_all()
        print(f"logs kept in {workdir}", file=sys.stderr)
        raise
    procs.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
