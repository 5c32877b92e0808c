"""gogeta's benchmark: `make bench` (or `python bench/run.py`), everything on 127.0.0.1.

Five parts, each bounded in time; every figure that depends on the machine is reported as a
ratio to a reference measured in the same run, because the machine is shared and noisy.

1. throughput and latency (wrk) of gogeta against nginx, nginx as a proxy and a bare
   pywsgi app; 2. propagation of an etcd change (v2, v3); 3. scale with many domains; 4. RSS
   with many idle keep-alive connections; 5. TLS against nginx terminating TLS. See
   bench/README.md for what each part measures and the BENCH_* variables that bound it.
   Results: a table on stdout, JSON and Markdown in bench/results/runs/ (git-ignored), and
   in bench/results/latest.* with BENCH_RECORD=1.

This file only wires the parts together; each lives in its own module of the `bench`
package (see bench/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/run.py` puts bench/ first on sys.path: the checkout instead, so that
    # the package is imported as `bench.*` and none of its modules shadows another.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import atexit  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import FrameType  # noqa: E402

from bench import connections, propagation, scale, throughput, tls  # noqa: E402
from bench.harness import Processes, free_port, raise_nofile, say  # noqa: E402
from bench.options import BenchOptions  # noqa: E402
from bench.report import BenchResults, write_bench  # noqa: E402
from bench.rig import Rig  # noqa: E402
from bench.servers import Nginx  # noqa: E402
from bench.tools import ensure_tools, machine  # noqa: E402


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)  # runs atexit, which stops every process we started


def main() -> int:
    opts = BenchOptions.from_env()
    tools = ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="gogeta-bench-"))
    workdir.chmod(0o755)
    procs = Processes(workdir)
    atexit.register(procs.stop_all)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    raise_nofile(opts.connections + 1024)

    results = BenchResults(machine(tools), opts, BenchOptions.command_line())
    say(f"bench: {opts}; logs in {workdir}")
    port_a, port_b = free_port(), free_port()
    backend = Nginx.backend(procs, tools.nginx, port_a, port_b)
    rig = Rig(opts, procs, tools, backend, port_a, port_b)

    def part_1() -> None:
        results.throughput = throughput.run(rig)

    def part_2() -> None:
        results.propagation = propagation.run(rig, "v2")
        results.propagation_v3 = propagation.run(rig, "v3")

    def part_3() -> None:
        results.scale = scale.run(rig)

    def part_4() -> None:
        results.connections = connections.run(rig)

    def part_5() -> None:
        results.tls = tls.run(rig)

    parts: list[tuple[int, str, Callable[[], None]]] = [
        (1, "throughput", part_1),
        (2, "propagation", part_2),
        (3, "scale", part_3),
        (4, "connections", part_4),
        (5, "tls", part_5),
    ]
    failed = False
    for number, name, run in parts:
        if number not in opts.parts:
            continue
        say(f"part {number}: {name}")
        try:
            run()
        except Exception as exc:  # one part failing must not lose the others
            failed = True
            results.errors[name] = f"{type(exc).__name__}: {exc}"
            say(f"part {number} failed: {exc}")

    procs.stop_all()
    write_bench(results, BenchOptions.record())
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"logs kept in {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
