"""`make run`'s script: a routed request reaches an example instance; SIGINT leaves no child.

The script is run as `make run` runs it, with free ports and its own etcd, so it neither
collides with a developer's running example nor with the test session's etcd.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.support import ROOT, free_port, request, wait_until


def test_make_run_routes_the_example_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    etcd_address = f"http://127.0.0.1:{free_port()}"
    out_path = tmp_path / "out.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "devtools" / "run_example.py"),
                "--port",
                str(port),
                "--etcd-address",
                etcd_address,
                "--backend-ports",
                "0,0",
                "--run-dir",
                str(tmp_path / "run"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def output() -> str:
        return out_path.read_text(errors="replace")

    children: list[psutil.Process] = []
    try:

        def ready() -> bool:
            # True once the script is gone too (wait_until retries exceptions), checked below.
            return proc.poll() is not None or "curl -H 'Host: example.localhost'" in output()

        wait_until(ready, timeout=60, what="the example to be up")
        assert proc.poll() is None, f"run_example exited {proc.returncode}:\n{output()}"
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "etcd" in names and "gogeta.py" in names, names

        answers = set()
        for _ in range(4):
            resp = request(port, "/", host="example.localhost")
            assert resp.status == 200, resp.text
            assert "Hello from the example application" in resp.text
            answers.add(resp.text.split("instance ")[1].split(" ")[0])
        assert answers == {"1", "2"}, "round robin should alternate the two instances"

        resp = request(port, "/", host="nowhere.localhost")
        assert resp.status == 404
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        gone, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
    assert code == 0, output()
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    assert "stopping" in output()
