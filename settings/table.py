"""The settings table: one row per flag, in the order `-h` and the README list them.

A row holds the flag's name as the original spelt it, its default (as text), its parser
(settings/values.py), its help line, and whether it is a boolean or a secret; its
environment variable follows from the name. The table is data: it parses nothing and
reads nothing itself. `Config` (settings/config.py) has one field per row, in this order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import values

# Where the `settings` package is: the checkout, or site-packages once pip-installed.
HERE = Path(__file__).resolve().parent.parent
# Beside the package in a checkout; inside the proxy package once pip-installed
# (pyproject.toml).
TEMPLATES = next(
    (d for d in (HERE / "templates", HERE / "proxy" / "templates") if d.is_dir()),
    HERE / "templates",
)


# Crawlers and scanners (README, "Wake-ups"): `bot\b` takes Googlebot, bingbot, AhrefsBot...
NO_WAKE_USER_AGENTS = (
    r"bot\b|crawl|spider|slurp|facebookexternalhit|zgrab|masscan|nmap|nikto|sqlmap|censys"
)


@dataclass(frozen=True)
class Setting:
    """One flag: its name as the original spelt it, default, parser and help line."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    boolean: bool = False
    secret: bool = False  # never shown: not in logs, errors or /__gogeta/routes

    @property
    def env_name(self) -> str:
        # etcdAddress → GOGETA_ETCD_ADDRESS, UrlHeaderParam → GOGETA_URL_HEADER_PARAM
        snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", self.name)
        return "GOGETA_" + snake.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("port", "7777", values.port, "port to listen on"),
    Setting(
        "listenAddress",
        "0.0.0.0",
        values.listen_address,
        "address to listen on (127.0.0.1 for local)",
    ),
    Setting(
        "tlsPort",
        "0",
        values.port,
        "also listen with TLS on -listenAddress:N, certificates from -certDir (0: off)",
    ),
    Setting("domainDir", "/domains", values.key_prefix, "etcd directory holding the domains"),
    Setting("serviceDir", "/services", values.key_prefix, "etcd directory holding the services"),
    Setting(
        "certDir",
        "/certs",
        values.key_prefix,
        "etcd directory of the TLS certificates: {hostname}/cert (PEM chain), {hostname}/key",
    ),
    Setting(
        "tlsCertFile",
        "",
        values.file,
        "default certificate (PEM chain) for clients without SNI or names without one in etcd",
    ),
    Setting("tlsKeyFile", "", values.file, "private key (PEM) of -tlsCertFile"),
    Setting(
        "acmeDirectory",
        "",
        values.optional_url,
        "ACME directory URL: certificates ordered on demand (HTTP-01) for routed domains"
        " without one in -certDir (empty: off)",
    ),
    Setting(
        "acmeEmail", "", values.text, "contact e-mail of the fleet's ACME account (empty: none)"
    ),
    Setting(
        "acmeCaFile",
        "",
        values.file,
        "CA bundle to verify the ACME server itself (empty: system's)",
    ),
    Setting(
        "acmeHoldSeconds",
        "10",
        values.non_negative_seconds,
        "the first TLS handshake for a name being ordered waits this long for its certificate",
    ),
    Setting(
        "etcdAddress",
        "http://127.0.0.1:4001/",
        values.urls,
        "etcd endpoint(s), comma-separated, tried in turn",
    ),
    Setting(
        "etcdApi",
        "v2",
        values.choice("v2", "v3"),
        "etcd API to use: v2 (/v2/keys, etcd < 3.6 with --enable-v2) or v3 (etcd 3.4+)",
    ),
    Setting(
        "etcdCaFile", "", values.file, "CA bundle to verify https etcd endpoints (empty: system's)"
    ),
    Setting(
        "etcdCertFile", "", values.file, "client certificate (PEM) for etcd's --client-cert-auth"
    ),
    Setting("etcdKeyFile", "", values.file, "private key (PEM) of -etcdCertFile"),
    Setting("etcdUsername", "", values.text, "etcd user, when etcd has auth enabled (empty: none)"),
    Setting(
        "etcdPassword",
        "",
        values.text,
        "password of -etcdUsername (prefer GOGETA_ETCD_PASSWORD: a flag shows in ps); never logged",
        secret=True,
    ),
    Setting(
        "resolverType",
        "IoEtcd",
        values.choice("IoEtcd", "Env", "Dummy"),
        "routing: IoEtcd (domains in etcd), Env (service = first label), Dummy",
    ),
    Setting(
        "templateDir",
        str(TEMPLATES),
        values.directory,
        "directory of the status page templates and __static__ assets",
    ),
    Setting(
        "lastAccessInterval",
        "10",
        values.non_negative_int,
        "seconds between two lastAccess writes for one instance",
    ),
    Setting(
        "forceFwSsl",
        "false",
        values.boolean,
        "redirect to https unless X-Forwarded-Proto is https",
        boolean=True,
    ),
    Setting(
        "hstsMaxAge",
        "0",
        values.non_negative_int,
        "Strict-Transport-Security: max-age=S on answers over TLS (0: not sent)",
    ),
    Setting(
        "UrlHeaderParam",
        "",
        values.header_name,
        "header that tells the backend its public base URL (off when empty)",
    ),
    Setting("cpuProfile", "/tmp/gogeta.prof", values.text, "file written by SIGUSR2 CPU profiling"),
    Setting(
        "drainTimeout",
        "10",
        values.seconds,
        "seconds SIGTERM/SIGINT lets requests in flight finish before exiting",
    ),
    Setting(
        "accessLog",
        "combined",
        values.choice("combined", "json", "off"),
        "access log lines on stdout: combined (+ host, upstream, times), json or off",
    ),
    Setting(
        "accessLogHealth",
        "true",
        values.boolean,
        "access lines for /__gogeta/health probes too (-accessLogHealth=false: left out)",
        boolean=True,
    ),
    Setting(
        "healthGraceSeconds",
        "30",
        values.seconds,
        "/__gogeta/health turns 503 once etcd has been unreachable this long",
    ),
    Setting(
        "trustedNetworks",
        "127.0.0.0/8,::1/128",
        values.networks,
        "clients allowed /__gogeta/routes and /__gogeta/metrics (comma-separated CIDRs;"
        " not -trustedProxies)",
    ),
    Setting(
        "trustedProxies",
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
        values.networks,
        "peers whose X-Forwarded-For/Proto/Host/Port are believed (comma-separated CIDRs;"
        " empty: none); from others gogeta writes its own. Not -trustedNetworks, which"
        " guards the admin paths",
    ),
    Setting(
        "dummyTarget",
        "http://localhost:8080/",
        values.url,
        "where the Dummy resolver sends every request",
    ),
    Setting("connectTimeout", "5", values.seconds, "seconds to connect to a backend (then 504)"),
    Setting("readTimeout", "60", values.seconds, "seconds to wait for backend data (then 504)"),
    Setting(
        "clientTimeout",
        "60",
        values.non_negative_seconds,
        "seconds a client may take to send a request head, or stay silent (0: no limit)",
    ),
    Setting(
        "wakeHoldSeconds",
        "0",
        values.non_negative_seconds,
        "hold a request this long while its application starts or wakes, then forward it"
        " (0: answer 503 with the wait page at once)",
    ),
    Setting(
        "noWakeUserAgents",
        NO_WAKE_USER_AGENTS,
        values.pattern,
        "User-Agents that never wake a passivated application (a case-insensitive regular"
        " expression; empty: every one may); HEAD, OPTIONS and /favicon.ico never do",
    ),
    Setting(
        "maxBodySize",
        "0",
        values.size,
        "largest request body accepted, e.g. 10m; larger ones get 413 (0: no limit)",
    ),
    Setting(
        "ejectSeconds",
        "5",
        values.non_negative_seconds,
        "seconds an instance that refused a connection is skipped (0: never)",
    ),
    Setting(
        "logLevel",
        "INFO",
        values.choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "application log level",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
