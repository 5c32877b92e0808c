"""`make run`'s script: a routed request reaches an example instance; SIGINT leaves no child.

The script is run as `make run` runs it, with free ports and its own etcd, so it neither
collides with a developer's running example nor with the test session's etcd. Taken ports
are held by this test process, so the script must name it as their holder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devtools import run_example
from tests.support import ROOT, exchange, free_port, request, wait_until

SCRIPT = str(ROOT / "devtools" / "run_example.py")


def run_argv(port: int, etcd_address: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        SCRIPT,
        "--port",
        str(port),
        "--etcd-address",
        etcd_address,
        "--backend-ports",
        "0,0",
        "--https-port",
        str(free_port()),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port this process listens on (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def refused(argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL
    )
    assert result.returncode != 0, result.stdout
    return result


def test_a_taken_gogeta_port_is_refused_at_once_naming_its_holder(
    tmp_path: Path, held_port: int
) -> None:
    result = refused(run_argv(held_port, f"http://127.0.0.1:{free_port()}", tmp_path))
    (line,) = (result.stdout + result.stderr).splitlines()
    assert f"port {held_port}" in line
    assert f"pid {os.getpid()}" in line and "pytest" in line, line
    assert not (tmp_path / "etcd").exists(), "nothing should have been started"


def test_a_taken_etcd_port_is_refused_naming_its_holder(tmp_path: Path, held_port: int) -> None:
    result = refused(run_argv(free_port(), f"http://127.0.0.1:{held_port}", tmp_path))
    (line,) = (result.stdout + result.stderr).splitlines()
    assert f"port {held_port}" in line and "etcd" in line
    assert f"pid {os.getpid()}" in line, line


def test_a_bad_gogeta_flag_is_refused_before_anything_starts(tmp_path: Path) -> None:
    argv = run_argv(free_port(), f"http://127.0.0.1:{free_port()}", tmp_path, "-accessLog", "x")
    (line,) = refused(argv).stdout.splitlines()
    assert "-accessLog" in line and "'x'" in line


def test_the_own_help_lists_the_own_options_and_mentions_gogeta_flags() -> None:
    result = subprocess.run([sys.executable, SCRIPT, "-h"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--backend-ports" in result.stdout and "gogeta.py -h" in result.stdout


def test_a_port_in_time_wait_counts_as_free() -> None:
    # An instance closes its connections first, so a stopped example leaves its ports in
    # TIME_WAIT for a minute: the next run must get them back all the same.
    port = free_port()
    for _ in range(2):
        server = run_example.start_backend("1", port)
        try:
            # Read until the instance closes: then it is the side left in TIME_WAIT.
            answer = exchange(port, b"GET / HTTP/1.0\r\nHost: example.localhost\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 200"), answer
        finally:
            server.shutdown()
            server.server_close()

        def in_time_wait() -> bool:
            rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
            return any(r[1].endswith(f":{port:04X}") and r[3] == "06" for r in rows)

        wait_until(in_time_wait, what=f"port {port} in TIME_WAIT")
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # what a check without SO_REUSEADDR sees
        assert run_example.port_free(port)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_make_run_routes_the_example_and_stops_cleanly(tmp_path: Path, api: str) -> None:
    port = free_port()
    etcd_address = f"http://127.0.0.1:{free_port()}"
    out_path = tmp_path / "out.log"
    run_dir = tmp_path / "run"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            # gogeta's own flags are passed on
            run_argv(port, etcd_address, run_dir, "-accessLog", "json", "-etcdApi", api),
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
        assert ("--enable-v2" in names) == (api == "v2"), names

        answers = []
        for _ in range(4):
            resp = request(port, "/", host="example.localhost")
            assert resp.status == 200, resp.text
            assert "Hello from the example application" in resp.text
            answers.append(resp.text.split("instance ")[1].split(" ")[0])
        assert answers == ["1", "2", "1", "2"], "instance 1 first, as the README says"

        # curl's `Accept: */*` gets the JSON answer; the page needs text/html.
        resp = request(port, "/", host="nowhere.localhost", headers={"Accept": "*/*"})
        assert resp.status == 404 and json.loads(resp.text)["status"] == "notfound"
        resp = request(port, "/", host="nowhere.localhost", headers={"Accept": "text/html"})
        assert resp.status == 404 and resp.text.startswith("<!doctype html>")
        access = (run_dir / "gogeta.log").read_text().splitlines()
        assert any(
            json.loads(line).get("host") == "example.localhost"
            for line in access
            if line.startswith("{")
        ), access

        # HTTPS as printed: the example's certificate, signed by the run's own CA.
        command = next(ln for ln in output().splitlines() if "curl --cacert" in ln)
        https_port = int(command.split("https://example.localhost:")[1].strip(" /"))
        context = ssl.create_default_context(cafile=str(run_dir / "tls" / "ca.pem"))
        with socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="example.localhost") as tls:
                tls.sendall(
                    b"GET / HTTP/1.1\r\nHost: example.localhost\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"Hello from the example application" in answer

        # A second example on the same etcd must not take the first one's route over.
        second = refused(run_argv(free_port(), etcd_address, tmp_path / "second", "-etcdApi", api))
        (line,) = second.stdout.splitlines()
        assert "/services/example" in line and "answer" in line, line
        for _ in range(2):
            assert request(port, "/", host="example.localhost").status == 200
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
