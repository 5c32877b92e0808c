"""Access log lines: one per request, in the combined log format plus fields, or JSON.

`proxy.front` fills an `Exchange`; `AccessWriter` formats it and writes the line to stdout
itself, not through `logging`. Combined is Apache/nginx's `combined` with gogeta's fields
appended as `key=value`, so tools that parse combined still do:

    127.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET /x HTTP/1.1" 200 12 "-" "curl/8" \
host="shop.example.com" upstream="shop/1" time=0.0042 upstream_time=0.0031

`upstream` is `service/instance` (or `host:port` for a `uri` domain), `-` when gogeta answered
itself; `time` is from the request to its last byte, `upstream_time` from sending the request
upstream to the backend's response headers, both in seconds.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger(__name__)

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
    # Printable ASCII is the common case: no loop over its characters.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    out = []
    for ch in text:
        if ch in '"\\' or not 0x20 <= ord(ch) < 0x7F:
            out.append(f"\\x{ord(ch):02X}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class _Stamps:
    """`time.strftime` of local time for one format, computed once per second."""

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, fmt: str) -> None:
        self._format = fmt
        self._second = -1
        self._text = ""

    def __call__(self, epoch: float) -> str:
        second = int(epoch)
        if second != self._second:
            self._text = time.strftime(self._format, time.localtime(second))
            self._second = second
        return self._text


_combined_stamp = _Stamps("%d/%b/%Y:%H:%M:%S %z")
_json_stamp = _Stamps("%Y-%m-%dT%H:%M:%S%z")


def combined(ex: Exchange) -> str:
    stamp = _combined_stamp(ex.started)
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
            "time": _json_stamp(ex.started),
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


def writer(name: str) -> AccessWriter | None:
    """What writes `-accessLog`'s lines to stdout, None for `off`: the lines of one turn of
    gevent's loop together, at the end of that turn."""
    line = formatter(name)
    if line is None:
        return None
    import gevent

    def at_end_of_turn(flush: Callable[[], None]) -> None:
        gevent.get_hub().loop.run_callback(flush)

    return AccessWriter(line, defer=at_end_of_turn)


# Lines kept for the end of the turn at most; beyond, they are written at once.
MAX_PENDING = 64 * 1024


class AccessWriter:
    """Writes access lines to a stream (stdout) itself, not through `logging` (its records,
    handler lock and formatter cost as much as making the line).

    With `defer`, the lines made during one turn of the event loop are written together
    when it ends (`defer(flush)` runs `flush` then): one system call for every request
    served in that turn instead of one each; they are out before the loop waits for
    anything. Without it, each line is written at once. A stream with a file descriptor
    gets `os.write`, so nothing waits in a buffer and a line is never split between two
    writes; any other stream, `write` and `flush`. What is pending at exit is written
    then. A write that fails loses its lines, as logging's handlers do, and says so once
    on the application log.
    """

    def __init__(
        self,
        line: Callable[[Exchange], str],
        stream: TextIO | None = None,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self._line = line
        self._stream = stream if stream is not None else sys.stdout
        self._defer = defer
        self._pending: list[str] = []
        self._size = 0
        self._failed = False
        try:
            self._fd: int | None = self._stream.fileno()
            self._stream.flush()  # what was printed before goes first
        except (AttributeError, OSError, ValueError):
            self._fd = None
        if defer is not None:
            atexit.register(self.flush)

    def __call__(self, ex: Exchange) -> None:
        text = self._line(ex) + "\n"
        if self._defer is None:
            self._write(text)
            return
        pending = self._pending
        pending.append(text)
        self._size += len(text)
        if len(pending) == 1:
            self._defer(self.flush)
        elif self._size >= MAX_PENDING:
            self.flush()  # the deferred flush then finds nothing

    def flush(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._size = 0
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            if self._fd is None:
                self._stream.write(text)
                self._stream.flush()
                return
            data = text.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._failed = True
                log.error("access lines cannot be written, losing them: %s", exc)
