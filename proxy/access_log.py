"""Access log lines: one per request, in the combined log format plus fields, or JSON.

Pure formatting, no I/O: `proxy.front` fills an `Exchange` and logs the line at INFO on the
`gogeta.access` logger. Combined is Apache/nginx's `combined` with gogeta's fields appended
as `key=value`, so tools that parse combined still do:

    127.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET /x HTTP/1.1" 200 12 "-" "curl/8" \
host="shop.example.com" upstream="shop/1" time=0.0042 upstream_time=0.0031

`upstream` is `service/instance` (or `host:port` for a `uri` domain), `-` when gogeta answered
itself; `time` is from the request to its last byte, `upstream_time` from sending the request
upstream to the backend's response headers, both in seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

FORMATS = ("combined", "json", "off")


@dataclass(slots=True)
class Exchange:
    """What one request did, as the access log and the metrics see it."""

    started: float  # epoch seconds
    client: str
    method: str
    target: str
    protocol: str
    host: str
    referer: str = ""
    user_agent: str = ""
    status: int = 0
    bytes_sent: int = 0
    upstream: str = ""
    seconds: float = 0.0
    upstream_seconds: float | None = None


def _quoted(text: str) -> str:
    """A field between double quotes, with quotes, backslashes and controls escaped (as nginx)."""
    out = []
    for ch in text:
        if ch in '"\\' or not 0x20 <= ord(ch) < 0x7F:
            out.append(f"\\x{ord(ch):02X}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def combined(ex: Exchange) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(ex.started))
    request = f"{ex.method} {ex.target} {ex.protocol}"
    upstream_time = "-" if ex.upstream_seconds is None else f"{ex.upstream_seconds:.4f}"
    return (
        f"{ex.client or '-'} - - [{stamp}] {_quoted(request)} {ex.status} {ex.bytes_sent} "
        f"{_quoted(ex.referer or '-')} {_quoted(ex.user_agent or '-')} "
        f"host={_quoted(ex.host or '-')} upstream={_quoted(ex.upstream or '-')} "
        f"time={ex.seconds:.4f} upstream_time={upstream_time}"
    )


def json_line(ex: Exchange) -> str:
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ex.started)),
            "client": ex.client,
            "method": ex.method,
            "target": ex.target,
            "protocol": ex.protocol,
            "status": ex.status,
            "bytes": ex.bytes_sent,
            "referer": ex.referer or None,
            "user_agent": ex.user_agent or None,
            "host": ex.host,
            "upstream": ex.upstream or None,
            "seconds": round(ex.seconds, 6),
            "upstream_seconds": None
            if ex.upstream_seconds is None
            else round(ex.upstream_seconds, 6),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def formatter(name: str) -> Callable[[Exchange], str] | None:
    """The line formatter for `-accessLog`, None for `off`."""
    return {"combined": combined, "json": json_line}.get(name)
