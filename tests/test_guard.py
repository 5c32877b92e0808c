"""Framing checks that stop request smuggling, on raw header lines (no sockets)."""

from __future__ import annotations

import pytest

from proxy.guard import MAX_HEADER_BYTES, RejectedRequest, check_header_lines

OK = [
    ["Host: a\r\n"],
    ["Host: a\r\n", "Content-Length: 5\r\n"],
    ["Host: a\r\n", "Transfer-Encoding: chunked\r\n"],
    ["Host: a\r\n", "Transfer-Encoding:  Chunked \r\n"],
    ["Host: a\r\n", "X-Many: 1\r\n", "X-Many: 2\r\n"],
]

REFUSED = [
    (["Host: a\r\n", "Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n"], 400),
    (["Host: a\r\n", "Content-Length: 4\r\n", "Content-Length: 4\r\n"], 400),
    (["Host: a\r\n", "Content-Length: 4\r\n", "Content-Length: 5\r\n"], 400),
    (["Host: a\r\n", "Content-Length: 4x\r\n"], 400),
    (["Host: a\r\n", "Content-Length: -1\r\n"], 400),
    (["Host: a\r\n", "Content-Length: +4\r\n"], 400),
    (["Host: a\r\n", "Content-Length: ４\r\n"], 400),  # a non-ASCII digit
    (["Host: a\r\n", "Transfer-Encoding: gzip, chunked\r\n"], 400),
    (["Host: a\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: chunked\r\n"], 400),
    (["Host: a\r\n", "Transfer-Encoding: identity\r\n"], 400),
    (["Host: a\r\n", "Transfer-Encoding : chunked\r\n"], 400),
    (["Host: a\r\n", "X-A: b\r\n", " folded\r\n"], 400),
    (["Host: a\r\n", "Host: b\r\n"], 400),
    (["Host: a\r\n", "X-A: b\rc\r\n"], 400),  # a bare CR inside a value
    (["Host: a\r\n", "X-A: b\x00c\r\n"], 400),
    (["Host: a\r\n"] + [f"X-{i}: v\r\n" for i in range(100)], 431),
    (["Host: a\r\n", "X-Big: " + "b" * MAX_HEADER_BYTES + "\r\n"], 431),
]


@pytest.mark.parametrize("lines", OK)
def test_unambiguous_requests_pass(lines: list[str]) -> None:
    check_header_lines(lines)


@pytest.mark.parametrize(("lines", "code"), REFUSED)
def test_ambiguous_or_oversized_requests_are_refused(lines: list[str], code: int) -> None:
    with pytest.raises(RejectedRequest) as caught:
        check_header_lines(lines)
    assert caught.value.code == code
    head = caught.value.response().split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 %d " % code)
