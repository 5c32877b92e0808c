"""How late the last of a burst of etcd writes is routed: `python bench/burst_propagation.py`.

Starts an etcd, a backend and gogeta (the v2 source), then, per trial, writes 500 new
domains (1,000 writes: `type` and `value`) back to back and measures from the moment the
last write returned to the moment gogeta routes every domain whose write came last in its
thread. Prints each trial and the median, and how often gogeta reloaded.

Options: `--trials N` (default 7), `--threads N` writers (default 1: strictly back to back),
`--gogeta DIR` to measure another checkout of gogeta against the same etcd.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.etcd_routes import named_backend, write_instance  # noqa: E402
from tests.support import EtcdServer, GogetaProcess, wait_until  # noqa: E402


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


def trial(etcd: EtcdServer, port: int, name: str, threads: int) -> tuple[float, int]:
    """(seconds from the last write to all routed, reloads during the trial)."""
    hosts = [f"d{i}.{name}.burst" for i in range(500)]
    chunks = [hosts[i::threads] for i in range(threads)]
    finished: list[float] = []

    def write(chunk: list[str]) -> None:
        client = etcd.client()
        for host in chunk:
            client.write(f"/domains/{host}/type", "service")
            client.write(f"/domains/{host}/value", "burst")
        finished.append(time.monotonic())

    before = counters(port)["reloads"]
    workers = [threading.Thread(target=write, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    last_write = max(finished)
    pending = [chunk[-1] for chunk in chunks]
    while pending:
        pending = [host for host in pending if not routed(port, host)]
    late = time.monotonic() - last_write
    wait_until(lambda: all(routed(port, h) for h in hosts), timeout=30, what="every domain")
    return late, counters(port)["reloads"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gogeta", type=Path, default=ROOT)
    args = parser.parse_args()
    etcd = EtcdServer().start()
    try:
        with named_backend("app") as app:
            write_instance(etcd.client(), "burst", "1", app.port)
            import tests.support as support

            support.ROOT = args.gogeta.resolve()  # where GogetaProcess finds gogeta.py
            proxy = GogetaProcess(["-etcdAddress", etcd.url, "-lastAccessInterval", "3600"])
            proxy.start()
            try:
                wait_until(lambda: counters(proxy.port)["reloads"] >= 2, what="gogeta loaded")
                results = []
                for number in range(args.trials):
                    late, reloads = trial(etcd, proxy.port, f"t{number}", args.threads)
                    results.append(late)
                    print(
                        f"trial {number}: routed {late * 1000:.0f} ms after the last write,"
                        f" {reloads} reloads"
                    )
                    etcd.wipe("/domains")
                    last = f"d499.t{number}.burst"
                    wait_until(
                        functools.partial(gone, proxy.port, last),
                        what="the burst deleted",
                    )
                print(
                    f"median {statistics.median(results) * 1000:.0f} ms,"
                    f" max {max(results) * 1000:.0f} ms over {args.trials} bursts of 1,000 writes"
                    f" ({args.threads} writer thread(s))"
                )
            finally:
                proxy.stop()
    finally:
        etcd.stop()


if __name__ == "__main__":
    main()
