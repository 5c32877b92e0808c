"""Settings: one declarative table feeds the command line, the environment and `-h`.

Flags keep the original's names and Go syntax (`-port 7777`, `-port=7777`, `-forceFwSsl`,
`--port` too) so gogeta stays a drop-in replacement (docs/behaviour.md §6). Each flag can come from
`GOGETA_<FLAG>` in the environment (`-etcdAddress` → `GOGETA_ETCD_ADDRESS`); a flag on the
command line wins over the environment. This module does no I/O beyond reading its inputs
(and `pyproject.toml` for `-version`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from errors import ConfigError

HERE = Path(__file__).resolve().parent
# Beside this file in a checkout; inside the proxy package once pip-installed (pyproject.toml).
TEMPLATES = next(
    (d for d in (HERE / "templates", HERE / "proxy" / "templates") if d.is_dir()),
    HERE / "templates",
)


class SettingError(ConfigError, ValueError):
    """A flag or variable with a value that cannot be used; the message names it."""


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _size(text: str) -> int:
    """Bytes, with an optional k, m or g suffix (powers of 1024): `10m`."""
    value = text.strip().lower()
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(value[-1:], 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit():
        raise ValueError("must be a size in bytes, such as 1048576, 512k, 10m or 1g")
    return int(digits) * scale


def _bool(text: str) -> bool:
    # The values Go's strconv.ParseBool accepts, so old command lines keep working.
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _key_prefix(text: str) -> str:
    value = "/" + text.strip().strip("/")
    if value == "/":
        raise ValueError("must be a non-empty etcd directory such as /domains")
    return value


def _urls(text: str) -> tuple[str, ...]:
    urls = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "http://" + part
        parsed = urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{part!r} is not an http(s) URL")
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(f"{part!r} has an invalid port") from None
        urls.append(part)
    if not urls:
        raise ValueError("needs at least one etcd URL")
    return tuple(urls)


def _url(text: str) -> str:
    return _urls(text)[0]


def _optional_url(text: str) -> str:
    """An http(s) URL, or empty (off)."""
    return _url(text) if text.strip() else ""


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for choice in choices:
            if text.strip().lower() == choice.lower():
                return choice
        raise ValueError("must be one of " + ", ".join(choices))

    return parse


def _header_name(text: str) -> str:
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^`|~-]+", value):
        raise ValueError("must be an HTTP header name")
    return value


def _directory(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory")
    return path.resolve()


def _text(text: str) -> str:
    return text


def _file(text: str) -> str:
    """A readable file's absolute path, or empty (not set)."""
    if not text.strip():
        return ""
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return str(path.resolve())


def _listen_address(text: str) -> str:
    value = text.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError("must be an IP address") from None
    return value


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not a network such as 10.0.0.0/8") from None
    return tuple(networks)


def _pattern(text: str) -> re.Pattern[str] | None:
    """A regular expression searched case-insensitively; empty: None (match nothing)."""
    if not text.strip():
        return None
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"must be a regular expression ({exc})") from None


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
    Setting("port", "7777", _port, "port to listen on"),
    Setting(
        "listenAddress", "0.0.0.0", _listen_address, "address to listen on (127.0.0.1 for local)"
    ),
    Setting(
        "tlsPort",
        "0",
        _port,
        "also listen with TLS on -listenAddress:N, certificates from -certDir (0: off)",
    ),
    Setting("domainDir", "/domains", _key_prefix, "etcd directory holding the domains"),
    Setting("serviceDir", "/services", _key_prefix, "etcd directory holding the services"),
    Setting(
        "certDir",
        "/certs",
        _key_prefix,
        "etcd directory of the TLS certificates: {hostname}/cert (PEM chain), {hostname}/key",
    ),
    Setting(
        "tlsCertFile",
        "",
        _file,
        "default certificate (PEM chain) for clients without SNI or names without one in etcd",
    ),
    Setting("tlsKeyFile", "", _file, "private key (PEM) of -tlsCertFile"),
    Setting(
        "acmeDirectory",
        "",
        _optional_url,
        "ACME directory URL: certificates ordered on demand (HTTP-01) for routed domains"
        " without one in -certDir (empty: off)",
    ),
    Setting("acmeEmail", "", _text, "contact e-mail of the fleet's ACME account (empty: none)"),
    Setting(
        "acmeCaFile", "", _file, "CA bundle to verify the ACME server itself (empty: system's)"
    ),
    Setting(
        "acmeHoldSeconds",
        "10",
        _non_negative_seconds,
        "the first TLS handshake for a name being ordered waits this long for its certificate",
    ),
    Setting(
        "etcdAddress",
        "http://127.0.0.1:4001/",
        _urls,
        "etcd endpoint(s), comma-separated, tried in turn",
    ),
    Setting(
        "etcdApi",
        "v2",
        _choice("v2", "v3"),
        "etcd API to use: v2 (/v2/keys, etcd < 3.6 with --enable-v2) or v3 (etcd 3.4+)",
    ),
    Setting("etcdCaFile", "", _file, "CA bundle to verify https etcd endpoints (empty: system's)"),
    Setting("etcdCertFile", "", _file, "client certificate (PEM) for etcd's --client-cert-auth"),
    Setting("etcdKeyFile", "", _file, "private key (PEM) of -etcdCertFile"),
    Setting("etcdUsername", "", _text, "etcd user, when etcd has auth enabled (empty: none)"),
    Setting(
        "etcdPassword",
        "",
        _text,
        "password of -etcdUsername (prefer GOGETA_ETCD_PASSWORD: a flag shows in ps); never logged",
        secret=True,
    ),
    Setting(
        "resolverType",
        "IoEtcd",
        _choice("IoEtcd", "Env", "Dummy"),
        "routing: IoEtcd (domains in etcd), Env (service = first label), Dummy",
    ),
    Setting(
        "templateDir",
        str(TEMPLATES),
        _directory,
        "directory of the status page templates and __static__ assets",
    ),
    Setting(
        "lastAccessInterval",
        "10",
        _non_negative_int,
        "seconds between two lastAccess writes for one instance",
    ),
    Setting(
        "forceFwSsl",
        "false",
        _bool,
        "redirect to https unless X-Forwarded-Proto is https",
        boolean=True,
    ),
    Setting(
        "hstsMaxAge",
        "0",
        _non_negative_int,
        "Strict-Transport-Security: max-age=S on answers over TLS (0: not sent)",
    ),
    Setting(
        "UrlHeaderParam",
        "",
        _header_name,
        "header that tells the backend its public base URL (off when empty)",
    ),
    Setting("cpuProfile", "/tmp/gogeta.prof", _text, "file written by SIGUSR2 CPU profiling"),
    Setting(
        "drainTimeout",
        "10",
        _seconds,
        "seconds SIGTERM/SIGINT lets requests in flight finish before exiting",
    ),
    Setting(
        "accessLog",
        "combined",
        _choice("combined", "json", "off"),
        "access log lines on stdout: combined (+ host, upstream, times), json or off",
    ),
    Setting(
        "accessLogHealth",
        "true",
        _bool,
        "access lines for /__gogeta/health probes too (-accessLogHealth=false: left out)",
        boolean=True,
    ),
    Setting(
        "healthGraceSeconds",
        "30",
        _seconds,
        "/__gogeta/health turns 503 once etcd has been unreachable this long",
    ),
    Setting(
        "trustedNetworks",
        "127.0.0.0/8,::1/128",
        _networks,
        "clients allowed /__gogeta/routes and /__gogeta/metrics (comma-separated CIDRs;"
        " not -trustedProxies)",
    ),
    Setting(
        "trustedProxies",
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
        _networks,
        "peers whose X-Forwarded-For/Proto/Host/Port are believed (comma-separated CIDRs;"
        " empty: none); from others gogeta writes its own. Not -trustedNetworks, which"
        " guards the admin paths",
    ),
    Setting(
        "dummyTarget",
        "http://localhost:8080/",
        _url,
        "where the Dummy resolver sends every request",
    ),
    Setting("connectTimeout", "5", _seconds, "seconds to connect to a backend (then 504)"),
    Setting("readTimeout", "60", _seconds, "seconds to wait for backend data (then 504)"),
    Setting(
        "clientTimeout",
        "60",
        _non_negative_seconds,
        "seconds a client may take to send a request head, or stay silent (0: no limit)",
    ),
    Setting(
        "wakeHoldSeconds",
        "0",
        _non_negative_seconds,
        "hold a request this long while its application starts or wakes, then forward it"
        " (0: answer 503 with the wait page at once)",
    ),
    Setting(
        "noWakeUserAgents",
        NO_WAKE_USER_AGENTS,
        _pattern,
        "User-Agents that never wake a passivated application (a case-insensitive regular"
        " expression; empty: every one may); HEAD, OPTIONS and /favicon.ico never do",
    ),
    Setting(
        "maxBodySize",
        "0",
        _size,
        "largest request body accepted, e.g. 10m; larger ones get 413 (0: no limit)",
    ),
    Setting(
        "ejectSeconds",
        "5",
        _non_negative_seconds,
        "seconds an instance that refused a connection is skipped (0: never)",
    ),
    Setting(
        "logLevel",
        "INFO",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "application log level",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Config:
    """Parsed settings, typed: one field per row of SETTINGS, named exactly like the flag.

    The table is the one source of flags, variables, `-h` and the README's table; this is
    its typed view, checked against it when the module loads (`_check_config_fields`).
    """

    port: int
    listenAddress: str
    tlsPort: int
    domainDir: str
    serviceDir: str
    certDir: str
    tlsCertFile: str
    tlsKeyFile: str
    acmeDirectory: str
    acmeEmail: str
    acmeCaFile: str
    acmeHoldSeconds: float
    etcdAddress: tuple[str, ...]
    etcdApi: str
    etcdCaFile: str
    etcdCertFile: str
    etcdKeyFile: str
    etcdUsername: str
    etcdPassword: str = field(repr=False)
    resolverType: str
    templateDir: Path
    lastAccessInterval: int
    forceFwSsl: bool
    hstsMaxAge: int
    UrlHeaderParam: str
    cpuProfile: str
    drainTimeout: float
    accessLog: str
    accessLogHealth: bool
    healthGraceSeconds: float
    trustedNetworks: tuple[Network, ...]
    trustedProxies: tuple[Network, ...]
    dummyTarget: str
    connectTimeout: float
    readTimeout: float
    clientTimeout: float
    wakeHoldSeconds: float
    noWakeUserAgents: re.Pattern[str] | None
    maxBodySize: int
    ejectSeconds: float
    logLevel: str

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _check_config_fields() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    if names != [s.name for s in SETTINGS]:
        raise AssertionError(
            f"settings.Config fields {names} must follow SETTINGS {[s.name for s in SETTINGS]}"
        )


_check_config_fields()


# GOGETA_* variables that are not settings but are read on purpose: the image's entrypoint
# runs gunicorn with GOGETA_WORKERS workers.
OTHER_VARIABLES = frozenset({"GOGETA_WORKERS"})


def unknown_variable_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per `GOGETA_*` variable nothing reads: a typo would go unnoticed."""
    env = os.environ if environ is None else environ
    known = {s.env_name for s in SETTINGS} | OTHER_VARIABLES
    # Compared without the prefix every name shares, which would make any two look alike.
    suffixes = {name.removeprefix("GOGETA_"): name for name in known}
    messages = []
    for name in sorted(n for n in env if n.startswith("GOGETA_") and n not in known):
        close = difflib.get_close_matches(name.removeprefix("GOGETA_"), sorted(suffixes), n=1)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        messages.append(f"unknown environment variable {name}{hint}: ignored")
    return messages


def version() -> str:
    """pyproject.toml's version in a checkout, the installed distribution's otherwise."""
    try:
        project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
        if project.get("name") == "gogeta":
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version("gogeta")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def usage() -> str:
    lines = ["usage: gogeta [flags]", "", "flags (Go syntax -flag value, -flag=value, or --flag):"]
    for s in SETTINGS:
        kind = "" if s.boolean else " value"
        lines.append(f"  -{s.name}{kind}")
        lines.append(f"        {s.help} (default '{s.default}'; env {s.env_name})")
    lines += ["  -version", "        print the version and exit", "  -h", "        this list"]
    return "\n".join(lines)


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Return the config from command-line flags over `GOGETA_*` variables over defaults.

    Raises SettingError naming the flag or variable at fault.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, tuple[str, str]] = {}  # setting name -> (where, text)
    for s in SETTINGS:
        if s.env_name in env:
            raw[s.name] = (s.env_name, env[s.env_name])

    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise SettingError(f"unexpected argument {arg!r} (flags look like -port 7777)")
        body = arg.lstrip("-")
        name, has_value, text = body.partition("=")
        setting = BY_NAME.get(name)
        if setting is None:
            raise SettingError(f"flag provided but not defined: -{name}")
        if not has_value:
            if setting.boolean:
                text = "true"
            elif i < len(args):
                text = args[i]
                i += 1
            else:
                raise SettingError(f"flag needs an argument: -{name}")
        raw[name] = (f"-{name}", text)

    values: dict[str, Any] = {}
    for s in SETTINGS:
        where, text = raw.get(s.name, ("default of -" + s.name, s.default))
        try:
            values[s.name] = s.parse(text)
        except ValueError as exc:
            shown = "(hidden)" if s.secret else repr(text)
            raise SettingError(f"invalid value {shown} for {where}: {exc}") from None
    if bool(values["etcdCertFile"]) != bool(values["etcdKeyFile"]):
        raise SettingError("-etcdCertFile and -etcdKeyFile go together: set both or neither")
    if values["etcdPassword"] and not values["etcdUsername"]:
        raise SettingError("-etcdPassword needs -etcdUsername")
    if bool(values["tlsCertFile"]) != bool(values["tlsKeyFile"]):
        raise SettingError("-tlsCertFile and -tlsKeyFile go together: set both or neither")
    if values["acmeDirectory"] and not values["tlsPort"]:
        raise SettingError("-acmeDirectory needs -tlsPort: certificates are for the TLS port")
    if values["acmeDirectory"] and values["resolverType"] != "IoEtcd":
        raise SettingError("-acmeDirectory needs -resolverType IoEtcd: orders for domains only")
    if values["tlsPort"] and values["tlsPort"] == values["port"]:
        raise SettingError("-tlsPort must differ from -port")
    return Config(**values)


def parse_or_exit(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """`parse`, but as a command line does it: `-h` prints usage, an error exits 2."""
    if any(a in ("-h", "-help", "--help") for a in argv):
        print(usage())
        sys.exit(0)
    if any(a in ("-version", "--version") for a in argv):
        print(f"gogeta {version()}")
        sys.exit(0)
    try:
        return parse(argv, environ)
    except SettingError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    print(f"gogeta: {message}", file=sys.stderr)
    sys.exit(2)
