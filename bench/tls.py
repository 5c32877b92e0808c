"""Part 5: TLS, gogeta against nginx terminating TLS with the same certificate.

Both proxy to the shared nginx backend, each with one process (nginx one worker, gogeta
standalone): gogeta with `-tlsPort` and the certificate as its default (`-tlsCertFile`),
nginx with `listen ssl` and the same files, both TLS 1.2/1.3 with session tickets on. Two
loads per round, in alternating order: new handshakes per second (wrk sending
`Connection: close`, so each request is a new connection and a full handshake: wrk does
not resume sessions) and keep-alive requests per second over TLS. Reported as ratios to
nginx within a round, medians over rounds: the handshake itself is OpenSSL's work in both.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from statistics import median

from bench.clients import WrkResult, run_wrk
from bench.harness import free_port, say, wait_listening
from bench.rig import Rig
from bench.servers import Nginx, start_gogeta

NGINX_TLS_SERVERS = """\
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""

LOADS = ("handshakes", "keep-alive")
CONNECTIONS = 50


@dataclass
class TlsRun:
    round: int
    load: str  # one of LOADS
    target: str  # nginx-tls, gogeta-tls
    rps: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float | None


@dataclass
class TlsRow:
    load: str
    target: str
    rps: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float | None
    x_nginx: float | None  # req/s ÷ nginx-tls's, within a round, median over rounds


@dataclass
class TlsResult:
    key_type: str
    runs: list[TlsRun]
    summary: list[TlsRow]


def run(rig: Rig) -> TlsResult:
    import trustme  # requirements-dev.txt: the same CA the tests use

    opts, procs, wrk = rig.opts, rig.procs, rig.tools.wrk
    tls_dir = procs.workdir / "tls"
    tls_dir.mkdir()
    tls_dir.chmod(0o755)  # as root, nginx reads them as its user
    leaf = trustme.CA().issue_cert("bench.localhost")
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    cert.write_text("".join(blob.bytes().decode() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o644)
    key_type = "ECDSA P-256" if "EC PRIVATE" in key.read_text() else "trustme's default"

    nginx_port = free_port()
    servers = NGINX_TLS_SERVERS.format(port=nginx_port, backend_port=rig.port_a, cert=cert, key=key)
    nginx = Nginx.start(procs, rig.tools.nginx, "nginx-tls", servers, [nginx_port])
    gogeta_port, tls_port = free_port(), free_port()
    flags = ["-resolverType", "Dummy", "-dummyTarget", f"http://127.0.0.1:{rig.port_a}/"]
    flags += ["-tlsPort", str(tls_port), "-tlsCertFile", str(cert), "-tlsKeyFile", str(key)]
    gogeta = start_gogeta(procs, "gogeta-tls", gogeta_port, flags)
    wait_listening(gogeta, tls_port, "gogeta-tls", timeout=30)
    targets = [
        ("nginx-tls", nginx_port, nginx.worker_parent_pid()),
        ("gogeta-tls", tls_port, gogeta.pid),
    ]

    say("part 5: warming up (1 s each)")
    for _, port, _ in targets:
        run_wrk(wrk, f"https://127.0.0.1:{port}/small", CONNECTIONS, 1)
    runs: list[TlsRun] = []
    for rnd in range(opts.rounds):
        for load in LOADS:
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, port, pid in order:
                say(f"part 5: round {rnd + 1}/{opts.rounds} {load} {name}")
                extra = ["-H", "Connection: close"] if load == "handshakes" else []
                res = run_wrk(
                    wrk,
                    f"https://127.0.0.1:{port}/small",
                    CONNECTIONS,
                    opts.seconds,
                    pid,
                    extra=extra,
                )
                runs.append(_run_of(rnd, load, name, res))
    procs.stop(gogeta, signal.SIGTERM)
    procs.stop(nginx.proc, signal.SIGTERM)
    return TlsResult(key_type, runs, summarise(runs))


def _run_of(rnd: int, load: str, target: str, res: WrkResult) -> TlsRun:
    errors = res.socket_errors + res.non_2xx
    return TlsRun(rnd, load, target, res.rps, res.p99_ms, errors, res.cpu_us_per_req)


def summarise(runs: list[TlsRun]) -> list[TlsRow]:
    rows = []
    for load in LOADS:
        mine = [r for r in runs if r.load == load]
        reference = {r.round: r for r in mine if r.target == "nginx-tls"}
        for target in ("nginx-tls", "gogeta-tls"):
            own = [r for r in mine if r.target == target]
            if not own:
                continue
            ratios = [
                r.rps / reference[r.round].rps
                for r in own
                if r.round in reference and reference[r.round].rps
            ]
            cpu = [r.cpu_us_per_req for r in own if r.cpu_us_per_req is not None]
            rows.append(
                TlsRow(
                    load=load,
                    target=target,
                    rps=median(r.rps for r in own),
                    p99_ms=median(r.p99_ms for r in own),
                    errors=sum(r.errors for r in own),
                    cpu_us_per_req=median(cpu) if cpu else None,
                    x_nginx=median(ratios) if ratios else None,
                )
            )
    return rows
