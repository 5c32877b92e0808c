"""The servers a benchmark starts: nginx, etcd, gogeta (standalone or under gunicorn).

Rule: each is started through `Processes`, on 127.0.0.1 and a free port, with its files in
the run's work directory; a start returns once the server listens (or raises, with the
tail of its log). What is measured of them is the parts' business.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench.harness import PYTHON, ROOT, Processes, free_port, wait_for, wait_listening

SMALL_BODY = b"hello world\n"  # what the nginx backend answers on its first port
OTHER_BODY = b"other world\n"  # ... and on its second one (propagation of a location change)
BIG_SIZE = 100 * 1024

# --------------------------------------------------------------------------- nginx

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{servers}
}}
"""

BACKEND_SERVERS = """\
  server {{
    listen 127.0.0.1:{port};
    location = /big {{ alias {prefix}/big; }}
    location / {{ return 200 "hello world\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{other_port};
    location / {{ return 200 "other world\\n"; }}
  }}
"""

# The reference proxy: nginx with a keep-alive pool to the backend, as it is usually set up.
PROXY_SERVERS = """\
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""


@dataclass
class Nginx:
    """One nginx (one worker) with its own prefix, config, pid file and error log."""

    name: str
    prefix: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, procs: Processes, binary: str, name: str, servers: str, ports: list[int]
    ) -> Nginx:
        prefix = procs.workdir / name
        prefix.mkdir()
        prefix.chmod(0o755)  # as root, nginx's worker runs as nobody and reads /big here
        (prefix / "big").write_bytes(b"x" * BIG_SIZE)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        proc = procs.start(name, argv)
        for port in ports:
            wait_listening(proc, port, name, timeout=15)
        return cls(name, prefix, proc)

    @classmethod
    def backend(cls, procs: Processes, binary: str, port: int, other_port: int) -> Nginx:
        """The backend every part forwards to: SMALL_BODY and /big on `port`, OTHER_BODY on
        `other_port`."""
        name = "nginx-backend"
        servers = BACKEND_SERVERS.format(
            port=port, other_port=other_port, prefix=procs.workdir / name
        )
        return cls.start(procs, binary, name, servers, [port, other_port])

    @classmethod
    def proxy(cls, procs: Processes, binary: str, port: int, backend_port: int) -> Nginx:
        servers = PROXY_SERVERS.format(port=port, backend_port=backend_port)
        return cls.start(procs, binary, "nginx-proxy", servers, [port])

    def worker_parent_pid(self) -> int:
        """The master's pid, from its pid file (cpu_seconds counts its worker too)."""
        pid_file = self.prefix / "nginx.pid"
        wait_for(pid_file.exists, 10, f"{self.name} pid file")
        return int(pid_file.read_text().strip())


# --------------------------------------------------------------------------- etcd


def etcd_argv(
    binary: str, name: str, data_dir: Path, client_port: int, peer_port: int
) -> list[str]:
    """A single-node etcd with the v2 API on loopback ports."""
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--enable-v2",
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--log-level=error",
    ]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def location(port: int) -> str:
    """An instance's `location` value (docs/behaviour.md §1) for a loopback port."""
    return json.dumps({"host": "127.0.0.1", "port": port})


class Etcd:
    """A single-node etcd with the v2 API (v3 too) on free loopback ports, and a small
    client of `api` (v2's PUT, or v3's JSON gateway; one keep-alive connection per thread)
    for the writes the parts time."""

    def __init__(self, procs: Processes, binary: str, name: str, api: str = "v2") -> None:
        self.api = api
        self.port = free_port()
        peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = procs.start(
            name, etcd_argv(binary, name, procs.workdir / name, self.port, peer_port)
        )
        self._local = threading.local()
        wait_for(lambda: self.get_status("/") == 200, 30, "etcd to answer")

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._local.conn = conn
        return conn

    def _request(self, method: str, key: str, body: str | None = None, path: str = "") -> int:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path or "/v2/keys" + key, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_status(self, key: str) -> int:
        if self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {self.proc.returncode}")
        return self._request("GET", key)

    def put(self, key: str, value: str) -> None:
        if self.api == "v3":
            body = json.dumps({"key": _b64(key), "value": _b64(value)})
            status = self._request("POST", key, body, path="/v3/kv/put")
        else:
            status = self._request("PUT", key, urlencode({"value": value}))
        if status not in (200, 201):
            raise RuntimeError(f"etcd {self.api} put {key}: HTTP {status}")

    def put_many(self, writes: Callable[[int], list[tuple[str, str]]], indices: range) -> float:
        """Write `writes(i)` (in order) for each i, from many threads; return the seconds."""
        lock = threading.Lock()
        items = iter(indices)
        failures: list[BaseException] = []

        def worker() -> None:
            while not failures:
                with lock:
                    i = next(items, None)
                if i is None:
                    return
                try:
                    for key, value in writes(i):
                        self.put(key, value)
                except BaseException as exc:  # report it from the main thread
                    failures.append(exc)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return time.perf_counter() - start


# --------------------------------------------------------------------------- gogeta


def start_gogeta(
    procs: Processes,
    name: str,
    port: int,
    flags: list[str],
    preexec_fn: Callable[[], None] | None = None,
    wait: bool = True,
    access_log: str = "off",
    checkout: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """`gogeta.py` standalone at WARNING, with `flags` after the common ones. No access log
    unless asked (part 1 measures the default, `combined`, beside `off`). `checkout`: the
    gogeta to start, this one unless another is to be measured the same way."""
    program = str(checkout / "gogeta.py")
    argv = [PYTHON, program, "-listenAddress", "127.0.0.1", "-port", str(port)]
    quiet = ["-logLevel", "WARNING", "-accessLog", access_log]
    proc = procs.start(name, [*argv, *quiet, *flags], preexec_fn=preexec_fn)
    if wait:
        try:
            wait_listening(proc, port, name, timeout=30)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{procs.log_tail(name)}") from None
    return proc


def start_gunicorn(
    procs: Processes,
    binary: str,
    name: str,
    port: int,
    env: dict[str, str],
    workers: int = 2,
    worker_class: str | None = None,
) -> subprocess.Popen[bytes]:
    """gogeta under gunicorn (its conf's worker class, gunicorn_hooks.ProxyWorker, unless
    `worker_class` names another), configured by GOGETA_* variables. SIGINT is its quick
    shutdown."""
    argv = [binary, "-c", str(ROOT / "gunicorn.conf.py"), "-w", str(workers)]
    if worker_class is not None:
        argv += ["-k", worker_class]
    argv += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "gogeta:create_app()"]
    proc = procs.start(name, argv, env=env)
    try:
        wait_listening(proc, port, name, timeout=30)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{procs.log_tail(name)}") from None
    return proc


def etcd_resolver_missing() -> str | None:
    """Why gogeta cannot be started with `-resolverType IoEtcd`, or None if it can."""
    probe = (
        "import settings, resolvers\n"
        "resolvers.make_resolver(settings.parse(['-resolverType', 'IoEtcd',"
        " '-etcdAddress', 'http://127.0.0.1:9']))\n"
    )
    try:
        out = subprocess.run(
            [PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "building an IoEtcd resolver timed out"
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {out.returncode}"
