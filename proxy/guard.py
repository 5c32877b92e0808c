"""Requests a proxy must refuse before anything reaches a backend.

A front server and a backend that disagree on where a request ends let an attacker
smuggle a second request inside the first. So any request whose framing is ambiguous is
answered 400 and never forwarded: both Content-Length and Transfer-Encoding, duplicate or
non-numeric Content-Length, a transfer coding other than `chunked`, obsolete line folding,
whitespace before the colon. Oversized header blocks get 431. Pure: works on the raw
header lines as the server read them.
"""

from __future__ import annotations

import http
import re
from typing import BinaryIO

MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RejectedRequest(ValueError):
    """A request refused before routing; `code` is the answer's status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def response(self) -> bytes:
        """The whole answer, status line to body, for a connection about to close."""
        phrase = http.HTTPStatus(self.code).phrase
        body = f"{self.code} {phrase}: {self.reason}\n".encode("latin-1", "replace")
        head = (
            f"HTTP/1.1 {self.code} {phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body


def read_header_lines(stream: BinaryIO) -> list[str]:
    """The raw header lines up to the blank line, decoded as latin-1, size-limited."""
    lines: list[str] = []
    total = 0
    while True:
        line = stream.readline(MAX_HEADER_BYTES + 1)
        if line in (b"\r\n", b"\n", b""):
            return lines
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise RejectedRequest(431, f"headers larger than {MAX_HEADER_BYTES} bytes")
        lines.append(line.decode("latin-1"))
        if len(lines) > MAX_HEADER_COUNT:
            raise RejectedRequest(431, f"more than {MAX_HEADER_COUNT} header lines")


def check_header_lines(lines: list[str]) -> list[tuple[str, str]]:
    """The (name, value) pairs of a header block; RejectedRequest when it is ambiguous or too
    big. Values lose their leading blanks and line end, as pywsgi's parser does."""
    if len(lines) > MAX_HEADER_COUNT:
        raise RejectedRequest(431, f"more than {MAX_HEADER_COUNT} header lines")
    if sum(len(line) for line in lines) > MAX_HEADER_BYTES:
        raise RejectedRequest(431, f"headers larger than {MAX_HEADER_BYTES} bytes")
    lengths: list[str] = []
    encodings: list[str] = []
    hosts = 0
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise RejectedRequest(400, "obsolete line folding")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise RejectedRequest(400, f"invalid header name {name[:40]!r}")
        value = value.lstrip(" \t").rstrip("\r\n")
        if "\r" in value or "\x00" in value:
            # RFC 9110 §5.5: never valid; a backend may read a bare CR as a line end.
            raise RejectedRequest(400, f"invalid character in header {name[:40]!r}")
        pairs.append((name, value))
        lower = name.lower()
        if lower == "content-length":
            lengths.append(value.strip())
        elif lower == "transfer-encoding":
            encodings.append(value.strip().lower())
        elif lower == "host":
            hosts += 1
    if hosts > 1:
        raise RejectedRequest(400, "more than one Host header")
    if encodings:
        if lengths:
            raise RejectedRequest(400, "both Content-Length and Transfer-Encoding")
        if encodings != ["chunked"]:
            raise RejectedRequest(400, "unsupported Transfer-Encoding")
    if len(lengths) > 1:
        raise RejectedRequest(400, "more than one Content-Length")
    if lengths and not (lengths[0].isdigit() and lengths[0].isascii() and len(lengths[0]) < 19):
        raise RejectedRequest(400, "invalid Content-Length")
    return pairs
