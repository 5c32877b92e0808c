"""`make run`: gogeta routing one example domain to two example instances, on this machine.

It uses the etcd at `--etcd-address` (default `GOGETA_ETCD_ADDRESS`, else
http://127.0.0.1:4001) and, when nothing answers there, starts one from the virtualenv
(data under `.run/etcd`): with `--enable-v2`, or for `-etcdApi v3` (`make run ETCD_API=v3`)
without it, as etcd 3.6 and later run. It serves a two-instance example backend from
this process, writes the route to it in etcd (docs/behaviour.md §1), starts gogeta, and
prints the curl commands that show a routed request and the "not found" page. It also
serves the example on HTTPS (`--https-port`, default 7443, 0: off) with a certificate for
example.localhost that it makes, signed by a CA of its own (`{run-dir}/tls/ca.pem`, for
curl's --cacert), and writes into etcd under `certDir` as an operator would
(docs/behaviour.md §9). SIGINT or
SIGTERM stops everything it started, gogeta first, then etcd, then the backend. Arguments
it does not know are gogeta's own flags, checked here and passed on.

Before starting anything it refuses, in one line, a taken gogeta or etcd port (naming the
process that holds it when /proc tells) and a route in etcd whose example instances still
answer: another example owns it, and rewriting it would leave that one answering 502.

Children run in their own process group, so a Ctrl-C in the terminal reaches this script
only and the shutdown order stays ours; on Linux they are also told to die with it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import settings  # noqa: E402  (gogeta's flags: checked here before they are passed on)
from devtools.example_keys import (  # noqa: E402
    DOMAIN,
    SERVICE,
    _b64,
    live_instances,
    log,
    port_open,
    v3_call,
    write_certificate,
    write_route,
)
from devtools.machine import etcd_binary, free_port  # noqa: E402

DEFAULT_ETCD = "http://127.0.0.1:4001"
DEFAULT_BACKEND_PORTS = (8081, 8082)
DEFAULT_HTTPS_PORT = 7443


# --------------------------------------------------------------------------- waiting


class Stopping(Exception):
    """SIGINT or SIGTERM arrived: unwind and stop what was started."""


_stop = threading.Event()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop.set()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; raise Stopping on a signal, RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if _stop.is_set():
            raise Stopping
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        _stop.wait(0.05)


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port. Connections of an earlier run in TIME_WAIT do not
    count: the servers started here bind with SO_REUSEADDR, as this check does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def holder_of(port: int) -> str:
    """Who listens on a TCP port, as far as /proc tells without privileges: "pid N (argv)"."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # local address is HEXIP:HEXPORT, state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return "a process this script cannot see"
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if not any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                continue
            argv = (fd_dir.parent / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:  # gone, or another user's
            continue
        command = " ".join(" ".join(a.decode(errors="replace") for a in argv).split())
        return f"pid {fd_dir.parent.name} ({command[:120]})"
    return "a process of another user"


def check_free(port: int, whose: str, fix: str) -> None:
    if not port_free(port):
        raise RuntimeError(f"{whose} port {port} is taken by {holder_of(port)}: {fix}")


def http_get(host: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


# --------------------------------------------------------------------------- children


def _pdeathsig() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux for SIGTERM when this script dies (even by SIGKILL).

    libc is looked up here, in the parent: the hook itself only makes one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


_DIE_WITH_PARENT = _pdeathsig()


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Any:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            process_group=0,
            preexec_fn=_DIE_WITH_PARENT,
        )


def terminate(proc: Any, name: str, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout:.0f}s: killing it")
            proc.kill()
            proc.wait()
    log(f"{name} stopped (exit {proc.returncode})")


def etcd_answers(host: str, port: int, api: str = "v2") -> bool:
    try:
        if api == "v3":
            v3_call(host, port, "/v3/kv/range", {"key": _b64("\0")})
            return True
        status, _ = http_get(host, port, "/v2/keys/", {})
        return status == 200
    except (OSError, RuntimeError, ValueError):
        return False


def start_etcd(host: str, port: int, data_dir: Path, run_dir: Path, api: str = "v2") -> Any:
    if host not in ("127.0.0.1", "localhost"):
        raise RuntimeError(
            f"nothing answers at {host}:{port} and it is not a loopback address: start etcd"
            " there, or leave GOGETA_ETCD_ADDRESS unset for a local one"
        )
    fix = f"no etcd {api} API answers there; stop it, or name another etcd with --etcd-address"
    check_free(port, "etcd's", fix)
    client = f"http://127.0.0.1:{port}"
    peer = f"http://127.0.0.1:{free_port()}"
    log(f"no etcd at {client}: starting one (data in {data_dir})")
    proc = spawn(
        [
            etcd_binary(),
            *(["--enable-v2"] if api == "v2" else []),
            "--name=gogeta-example",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=gogeta-example={peer}",
            "--log-level=warn",
        ],
        run_dir / "etcd.log",
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited {proc.returncode}: see {run_dir / 'etcd.log'}")
        return etcd_answers("127.0.0.1", port, api)

    wait_for(up, 30, "etcd to answer")
    return proc


# --------------------------------------------------------------------------- the backend


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def example_app(instance: str, port: int) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that says which instance answered and what it was asked."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        text = (
            f"Hello from the example application, instance {instance}"
            f" (127.0.0.1:{port}).\n\n"
            f"You asked for {environ.get('HTTP_HOST', '?')}{path}{'?' + query if query else ''}"
            f" and gogeta picked this instance of service {SERVICE!r} from etcd.\n"
            f"X-Forwarded-For: {environ.get('HTTP_X_FORWARDED_FOR', '-')}\n\n"
            "Ask again: the next request goes to the other instance (round robin).\n"
        )
        data = text.encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    return app


def start_backend(instance: str, port: int) -> WSGIServer:
    server = make_server(
        "127.0.0.1",
        port,
        example_app(instance, port),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name=f"backend-{instance}", daemon=True).start()
    return server


def backend_ports(requested: Sequence[int]) -> list[int]:
    """The requested ports; 0, or a default port already taken, becomes a free one."""
    ports = []
    for want in requested:
        if want and (want not in DEFAULT_BACKEND_PORTS or port_free(want)):
            ports.append(want)
        else:
            ports.append(free_port())
    return ports


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the rest: gogeta's own flags."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Any other argument is one of gogeta's own flags (`python gogeta.py -h`),"
        ' passed on: make run RUN_ARGS="-accessLog json". -port and -etcdAddress are'
        " --port and --etcd-address.",
        allow_abbrev=False,  # --r must not become --run-dir when it is meant for gogeta
    )
    parser.add_argument(
        "--etcd-address",
        "-etcdAddress",
        default=os.environ.get("GOGETA_ETCD_ADDRESS") or DEFAULT_ETCD,
        help="etcd to use, started here when nothing answers (default $GOGETA_ETCD_ADDRESS"
        f" or {DEFAULT_ETCD})",
    )
    parser.add_argument(
        "--port", "-port", type=int, default=7777, help="gogeta's port (default 7777)"
    )
    parser.add_argument(
        "--https-port",
        type=int,
        default=DEFAULT_HTTPS_PORT,
        help=f"gogeta's -tlsPort, any free one when taken; 0: no HTTPS (default"
        f" {DEFAULT_HTTPS_PORT})",
    )
    parser.add_argument(
        "--backend-ports",
        default=",".join(map(str, DEFAULT_BACKEND_PORTS)),
        help="ports of the two example instances; 0 = any free port (default 8081,8082)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=ROOT / ".run",
        help="logs and etcd data (default .run/, git-ignored)",
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str]) -> int:
    args, gogeta_flags = parse_args(argv)
    try:
        # As gogeta will read them (flags over GOGETA_* variables), for the etcd prefixes.
        config = settings.parse(gogeta_flags)
    except settings.SettingError as exc:
        log(f"error: gogeta: {exc}")
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)

    first = args.etcd_address.split(",")[0].strip()
    parsed = urlsplit(first if "://" in first else "http://" + first)
    etcd_host, etcd_port = parsed.hostname or "127.0.0.1", parsed.port or 4001
    run_dir: Path = args.run_dir.resolve()
    domain_dir: str = config.domainDir
    service_dir: str = config.serviceDir
    api: str = config.etcdApi

    etcd_proc: Any = None
    gogeta: Any = None
    backends: list[WSGIServer] = []
    code = 0
    try:
        check_free(args.port, "gogeta's", 'stop it, or choose another port: RUN_ARGS="--port N"')
        if etcd_answers(etcd_host, etcd_port, api):
            live = live_instances(etcd_host, etcd_port, service_dir, api)
            if live:
                holders = ", ".join(
                    f"{w} held by {holder_of(int(w.rpartition(':')[2]))}"
                    if w.startswith(("127.0.0.1:", "localhost:"))
                    else w
                    for w in live
                )
                raise RuntimeError(
                    f"{service_dir}/{SERVICE} in the etcd at {first} has instances that answer"
                    f" ({holders}): another example is running; stop it first, or give this"
                    " one its own etcd with --etcd-address and its own --run-dir"
                )
            log(f"using the etcd that answers at {first}")
        else:
            etcd_proc = start_etcd(etcd_host, etcd_port, run_dir / "etcd", run_dir, api)
        ports = backend_ports([int(p) for p in args.backend_ports.split(",")])
        for index, p in enumerate(ports, start=1):
            backends.append(start_backend(str(index), p))
            log(f"example instance {index} listening on http://127.0.0.1:{p}/")
        write_route(etcd_host, etcd_port, domain_dir, service_dir, ports, api)
        https_port = config.tlsPort or args.https_port
        tls_flags: list[str] = []
        if https_port:
            if not config.tlsPort and not port_free(https_port):
                https_port = free_port()
                log(f"port {args.https_port} is taken: HTTPS on {https_port}")
            ca_file = write_certificate(etcd_host, etcd_port, config.certDir, run_dir / "tls", api)
            if not config.tlsPort:
                tls_flags = ["-tlsPort", str(https_port)]

        gogeta_log = run_dir / "gogeta.log"
        argv_gogeta = [
            sys.executable,
            str(ROOT / "gogeta.py"),
            "-listenAddress",
            "127.0.0.1",
            "-port",
            str(args.port),
            "-etcdAddress",
            args.etcd_address,
            *tls_flags,
            *gogeta_flags,
        ]
        log("starting " + " ".join(argv_gogeta[1:]) + f" (log in {gogeta_log})")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        gogeta = spawn(argv_gogeta, gogeta_log, env)

        def listening() -> bool:
            if gogeta.poll() is not None:
                tail = gogeta_log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"gogeta exited {gogeta.returncode}:\n  " + "\n  ".join(tail))
            return port_open("127.0.0.1", args.port)

        wait_for(listening, 20, "gogeta to listen")

        def loaded() -> bool:
            # Not a request to the example: it would take instance 1's turn.
            listening()
            try:
                status, _ = http_get("127.0.0.1", args.port, "/__gogeta/health", {})
            except OSError:
                return False
            return status == 200

        try:
            wait_for(loaded, 15, "gogeta to load the routes from etcd")
        except RuntimeError as exc:
            log(f"warning: {exc}; see {gogeta_log}")

        base = f"http://127.0.0.1:{args.port}/"
        print(
            "\ngogeta is running. A routed request (run it twice: the instances alternate):\n\n"
            f"    curl -H 'Host: {DOMAIN}' {base}\n\n"
            "A hostname that etcd does not know gets 404 'not found', as JSON for curl"
            " (its Accept is */*),\nas the HTML page with -H 'Accept: text/html':\n\n"
            f"    curl -i -H 'Host: nowhere.localhost' {base}\n\n"
            + (
                "Over HTTPS, with the certificate made for example.localhost (curl trusts its"
                " CA with\n--cacert; --resolve sends SNI and Host for that name to 127.0.0.1):"
                f"\n\n    curl --cacert {ca_file} --resolve {DOMAIN}:{https_port}:127.0.0.1"
                f" https://{DOMAIN}:{https_port}/\n\n"
                if https_port
                else ""
            )
            + "Ctrl-C stops gogeta, the example instances and the etcd started here.\n",
            flush=True,
        )
        while not _stop.is_set():
            if gogeta.poll() is not None:
                raise RuntimeError(f"gogeta exited {gogeta.returncode}: see {gogeta_log}")
            _stop.wait(0.5)
        raise Stopping
    except Stopping:
        log("stopping")
    except RuntimeError as exc:
        log(f"error: {exc}")
        code = 1
    finally:
        # Shut down even if a second Ctrl-C arrives: it only sets the flag again.
        if gogeta is not None:
            terminate(gogeta, "gogeta")
        if etcd_proc is not None:
            terminate(etcd_proc, "etcd")
        for server in backends:
            server.shutdown()
            server.server_close()
        if backends:
            log("example instances stopped")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
