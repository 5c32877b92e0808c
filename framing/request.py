"""Request framing: what a client sent, checked by the RFCs' own rules before anything
reaches a backend.

A front server and a backend that disagree on where a request ends let an attacker
smuggle a second request inside the first, and on a pooled backend connection the answer
to it goes to the next client. So this module is strict where Python is lenient:
`str.strip()`, `split()` and `int()` accept bytes HTTP does not (`\\x0b`, `\\x85`, `\\xa0`,
`4_0`...), and none of them is used here to decide framing. Every ambiguous request is
refused (400, or 405/505/431) and never forwarded; what is accepted is handed on in its
normalised form (a Content-Length as plain digits), so the backend cannot read it another
way. Pure: works on the request line and the raw header lines as the server read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from errors import RejectedRequest

__all__ = ["RejectedRequest", "RequestLine", "check_header_lines", "parse_request_line"]

MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 64 * 1024

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 9110 §5.5: a field value is VCHAR, obs-text, SP and HTAB; every other control byte
# (NUL, a bare CR or LF, VT, FF, DEL...) is invalid. A bare CR is the dangerous one: some
# backends take it for a line end.
_INVALID_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, one SP each, the
# target visible ASCII only (RFC 3986 characters; raw bytes above 0x7f are percent-encoded
# by clients), the line ended by CRLF or a bare LF (§2.2).
_REQUEST_LINE = re.compile(
    r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?\n?", re.ASCII
)
# RFC 9112 §3.2.2: absolute-form; its authority wins over Host. userinfo is refused
# (RFC 9110 §4.2.4: a recipient should treat it as an error).
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#@]*)([/?][\x21-\x7e]*)?", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_OWS = " \t"  # RFC 9110 §5.6.3: the only whitespace around a field value

# Methods a reverse proxy answers itself instead of forwarding: CONNECT asks for a tunnel
# to anywhere, TRACE would echo the request (cookies and all) back (RFC 9110 §9.3.8).
REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    target: str  # origin-form (`/path?query`) or `*`, what the backend is sent
    version: str  # `HTTP/1.0` or `HTTP/1.1`
    authority: str = ""  # from an absolute-form target: the Host to route and send


def parse_request_line(line: str) -> RequestLine:
    """The request line, or RejectedRequest: 400 malformed, 405 CONNECT/TRACE, 505 not 1.x."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise RejectedRequest(400, f"malformed request line {line[:80]!r}")
    method, target, major, minor = match.groups()
    if major != "1":
        raise RejectedRequest(505, f"HTTP/{major}.{minor} is not served here")
    if minor not in "01":
        raise RejectedRequest(505, f"HTTP/1.{minor} is not served here")
    if method in REFUSED_METHODS:
        raise RejectedRequest(405, f"{method} is not allowed", (("Allow", ALLOWED_METHODS),))
    version = f"HTTP/1.{minor}"
    if target.startswith("/"):
        return RequestLine(method, target, version)
    if target == "*":  # asterisk-form: OPTIONS about the server itself (RFC 9112 §3.2.4)
        if method != "OPTIONS":
            raise RejectedRequest(400, f"{method} * is not a request")
        return RequestLine(method, target, version)
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None or not absolute.group(1):
        raise RejectedRequest(400, f"invalid request target {target[:80]!r}")
    authority, rest = absolute.groups()
    if rest is None:
        rest = "/"
    elif rest.startswith("?"):
        rest = "/" + rest
    return RequestLine(method, rest.partition("#")[0], version, authority)


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


def check_header_lines(lines: list[str], version: str = "HTTP/1.1") -> list[tuple[str, str]]:
    """The (name, value) pairs of a header block; RejectedRequest when it is ambiguous or too
    big. Values lose their surrounding SP/HTAB and the line end (and nothing else); a
    Content-Length comes back as plain digits without leading zeros."""
    if len(lines) > MAX_HEADER_COUNT:
        raise RejectedRequest(431, f"more than {MAX_HEADER_COUNT} header lines")
    if sum(len(line) for line in lines) > MAX_HEADER_BYTES:
        raise RejectedRequest(431, f"headers larger than {MAX_HEADER_BYTES} bytes")
    length: int | None = None
    encodings: list[str] = []
    hosts = 0
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # RFC 9112 §5.2: a server may refuse obs-fold
            raise RejectedRequest(400, "obsolete line folding")
        name, colon, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between name and colon (400, never "fixed").
        if not colon or not _TOKEN.fullmatch(name):
            raise RejectedRequest(400, f"invalid header name {name[:40]!r}")
        value = _without_line_end(value).strip(_OWS)
        if _INVALID_IN_VALUE.search(value):
            raise RejectedRequest(400, f"invalid character in header {name[:40]!r}")
        lower = name.lower()
        if lower == "content-length":
            # RFC 9110 §8.6: 1*DIGIT, once (a repeated one is refused even when equal).
            if length is not None:
                raise RejectedRequest(400, "more than one Content-Length")
            if not _DIGITS.fullmatch(value) or len(value) > 18:
                raise RejectedRequest(400, "invalid Content-Length")
            length = int(value)
            value = str(length)
        elif lower == "transfer-encoding":
            encodings.append(value.lower())
        elif lower == "host":
            hosts += 1
        pairs.append((name, value))
    if hosts > 1:
        raise RejectedRequest(400, "more than one Host header")
    if encodings:
        # RFC 9112 §6.1: HTTP/1.0 has no transfer codings; §6.3: both framings at once is
        # the classic smuggling vector; only `chunked` alone is something we can frame.
        if version == "HTTP/1.0":
            raise RejectedRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        if length is not None:
            raise RejectedRequest(400, "both Content-Length and Transfer-Encoding")
        if encodings != ["chunked"]:
            raise RejectedRequest(400, "unsupported Transfer-Encoding")
    return pairs


def _without_line_end(text: str) -> str:
    # Exactly one CRLF or LF: `rstrip("\r\n")` would also swallow a bare CR before it.
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text
