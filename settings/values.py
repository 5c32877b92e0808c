"""How each setting's text becomes its value: one parser per kind of value.

A parser takes the text as it came (a flag's value, a variable, a default) and returns the
typed value, or raises ValueError with a phrase that completes "invalid value 'x' for
-flag: ..." (settings/parsing.py adds the flag or the variable). Parsers know no flag,
no table and no `Config`; only `directory` and `file` look at the filesystem.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def port(text: str) -> int:
    value = integer(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def non_negative_int(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def size(text: str) -> int:
    """Bytes, with an optional k, m or g suffix (powers of 1024): `10m`."""
    value = text.strip().lower()
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(value[-1:], 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit():
        raise ValueError("must be a size in bytes, such as 1048576, 512k, 10m or 1g")
    return int(digits) * scale


def boolean(text: str) -> bool:
    # The values Go's strconv.ParseBool accepts, so old command lines keep working.
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def key_prefix(text: str) -> str:
    value = "/" + text.strip().strip("/")
    if value == "/":
        raise ValueError("must be a non-empty etcd directory such as /domains")
    return value


def urls(text: str) -> tuple[str, ...]:
    found = []
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
        found.append(part)
    if not found:
        raise ValueError("needs at least one etcd URL")
    return tuple(found)


def url(text: str) -> str:
    return urls(text)[0]


def optional_url(text: str) -> str:
    """An http(s) URL, or empty (off)."""
    return url(text) if text.strip() else ""


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for option in choices:
            if text.strip().lower() == option.lower():
                return option
        raise ValueError("must be one of " + ", ".join(choices))

    return parse


def header_name(text: str) -> str:
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^`|~-]+", value):
        raise ValueError("must be an HTTP header name")
    return value


def directory(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory")
    return path.resolve()


def text(value: str) -> str:
    return value


def file(text: str) -> str:
    """A readable file's absolute path, or empty (not set)."""
    if not text.strip():
        return ""
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return str(path.resolve())


def listen_address(text: str) -> str:
    value = text.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError("must be an IP address") from None
    return value


def networks(text: str) -> tuple[Network, ...]:
    found: list[Network] = []
    for part in text.split(","):
        if part.strip():
            try:
                found.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not a network such as 10.0.0.0/8") from None
    return tuple(found)


def pattern(text: str) -> re.Pattern[str] | None:
    """A regular expression searched case-insensitively; empty: None (match nothing)."""
    if not text.strip():
        return None
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"must be a regular expression ({exc})") from None
