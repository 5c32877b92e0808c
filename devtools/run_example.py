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

This file is the order of things; the parts are beside it: the port checks
(devtools/ports.py), the children and the waits (devtools/children.py), the local etcd
(devtools/local_etcd.py), the example instances (devtools/example_app.py) and their keys
in etcd (devtools/example_keys.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import settings  # noqa: E402  (gogeta's flags: checked here before they are passed on)
from devtools.children import (  # noqa: E402
    Stopping,
    spawn,
    stop_on_signals,
    stopped,
    terminate,
    wait_for,
)
from devtools.example_app import DEFAULT_BACKEND_PORTS, backend_ports  # noqa: E402
from devtools.example_app import start_backend as start_backend  # noqa: E402  (tests use it here)
from devtools.example_keys import (  # noqa: E402
    DOMAIN,
    SERVICE,
    live_instances,
    log,
    port_open,
    write_certificate,
    write_route,
)
from devtools.local_etcd import etcd_answers, start_etcd  # noqa: E402
from devtools.machine import free_port  # noqa: E402
from devtools.ports import check_free, holder_of, http_get  # noqa: E402
from devtools.ports import port_free as port_free  # noqa: E402  (tests use it here)

DEFAULT_ETCD = "http://127.0.0.1:4001"
DEFAULT_HTTPS_PORT = 7443


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
    stop_on_signals()

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
        while not stopped():
            if gogeta.poll() is not None:
                raise RuntimeError(f"gogeta exited {gogeta.returncode}: see {gogeta_log}")
            stopped(0.5)
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
