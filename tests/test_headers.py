"""The header parser that replaces the email package: same message, same values."""

from __future__ import annotations

import http.client
import io

import pytest

from proxy.headers import _original_parse_headers, parse_headers

BLOCKS = [
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nServer: nginx\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"X-Folded: a\r\n b\r\nOther: c\r\n\r\n",  # obsolete folding: the email parser's job
    b"Bad Name: x\r\nOk: y\r\n\r\n",
    b"NoColon\r\nOk: y\r\n\r\n",
    b"Ok: y\n\n",
    b"K: \xe9\xff\r\n\r\n",
    b"Cut: off",  # the connection closed inside the head
    b"\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_result_as_the_email_parser(block: bytes) -> None:
    expected = _original_parse_headers(io.BytesIO(block))
    parsed = parse_headers(io.BytesIO(block))
    assert type(parsed) is type(expected)
    assert parsed.items() == expected.items()
    assert parsed.get_all("Set-Cookie") == expected.get_all("Set-Cookie")


def test_the_limits_of_http_client_hold() -> None:
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"a" * 70_000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        parse_headers(io.BytesIO(b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"))
