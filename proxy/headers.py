"""Header blocks parsed without the `email` package.

http.client (for every backend response) parses headers with `email.parser`, a MIME mail
parser: about a sixth of gogeta's CPU per proxied request went there. HTTP headers as
backends send them are plain `Name: value` lines, so this module parses those directly
into the very same `HTTPMessage` (same names, same values), and hands any block with
something unusual in it (a folded line, a name that is not a token) to the email parser,
exactly as before. `install()` puts it in place of `http.client.parse_headers`, which
http.client looks up at each response.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any, BinaryIO

# http.client's own limits (`_MAXLINE`, `_MAXHEADERS`).
MAX_LINE = 65536
MAX_HEADERS = 100

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_original_parse_headers = http.client.parse_headers


def parse_headers(fp: BinaryIO, _class: Any = http.client.HTTPMessage) -> Any:
    """What `http.client.parse_headers` returns, without the email parser when it can."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
    message = _class()
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return _email_parse(lines, _class)
        # As the email parser's compat32 policy does: leading blanks and the line end go.
        message.set_raw(
            name.decode("latin-1"), value.decode("latin-1").lstrip(" \t").rstrip("\r\n")
        )
    return message


def _email_parse(lines: list[bytes], _class: Any) -> Any:
    text = b"".join(lines).decode("iso-8859-1") + "\r\n"
    return email.parser.Parser(_class=_class).parsestr(text)


def install() -> None:
    """Use `parse_headers` for every response http.client reads in this process."""
    http.client.parse_headers = parse_headers  # type: ignore[assignment]
