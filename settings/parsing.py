"""Reading the settings: command-line flags over `GOGETA_*` variables over defaults.

Flags keep the original's names and Go syntax (`-port 7777`, `-port=7777`, `-forceFwSsl`,
`--port` too) so gogeta stays a drop-in replacement (docs/behaviour.md §6). Each flag can
come from `GOGETA_<FLAG>` in the environment (`-etcdAddress` → `GOGETA_ETCD_ADDRESS`); a
flag on the command line wins over the environment. An unusable value is a `SettingError`
naming the flag or the variable; `parse_or_exit` is the command line's way: `-h`, `-version`,
exit 2 on an error. No I/O beyond reading its inputs (and `pyproject.toml` for `-version`).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from errors import ConfigError
from settings.config import Config
from settings.table import BY_NAME, HERE, SETTINGS


class SettingError(ConfigError, ValueError):
    """A flag or variable with a value that cannot be used; the message names it."""


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
