"""Framing checks that stop request smuggling, on raw header lines (no sockets)."""

from __future__ import annotations

import pytest

from framing.request import (
    MAX_HEADER_BYTES,
    RejectedRequest,
    RequestLine,
    check_header_lines,
    parse_request_line,
)

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
    (["Host: a\r\n", "Content-Length: \xa040\r\n"], 400),  # str.strip() would take it
    (["Host: a\r\n", "Content-Length: 40\x85\r\n"], 400),
    (["Host: a\r\n", "Content-Length: 5\x0b\r\n"], 400),
    (["Host: a\r\n", "Content-Length: 4_0\r\n"], 400),  # int() would take it
    (["Host: a\r\n", "Content-Length: 5\r\r\n"], 400),  # a bare CR before the line end
    (["Host: a\r\n", "Transfer-Encoding: chunked\x0b\r\n"], 400),
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


# Every byte but SP/HTAB and the digits, before or after a Content-Length's digits (LF
# after them is a line end, so it is no violation there).
AROUND = [b for b in range(256) if chr(b) not in " \t0123456789"]


@pytest.mark.parametrize("byte", AROUND)
def test_any_other_byte_around_a_content_length_is_refused(byte: int) -> None:
    char = chr(byte)
    cases = [f"Content-Length: {char}5\r\n"]
    if char != "\n":
        cases.append(f"Content-Length: 5{char}\r\n")
    for line in cases:
        with pytest.raises(RejectedRequest) as caught:
            check_header_lines(["Host: a\r\n", line])
        assert caught.value.code == 400, repr(line)


def test_lengths_are_normalised_and_blanks_are_only_sp_and_htab() -> None:
    pairs = check_header_lines(["Host: a\r\n", "Content-Length: \t 0040 \t\r\n", "X: \xa0v\r\n"])
    assert pairs == [("Host", "a"), ("Content-Length", "40"), ("X", "\xa0v")]


def test_chunked_in_an_http_1_0_request_is_refused() -> None:
    with pytest.raises(RejectedRequest):
        check_header_lines(["Host: a\r\n", "Transfer-Encoding: chunked\r\n"], "HTTP/1.0")


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("GET / HTTP/1.1\r\n", RequestLine("GET", "/", "HTTP/1.1")),
        ("POST /a?b=c HTTP/1.0\n", RequestLine("POST", "/a?b=c", "HTTP/1.0")),
        ("OPTIONS * HTTP/1.1\r\n", RequestLine("OPTIONS", "*", "HTTP/1.1")),
        ("GET http://b.test/x?y HTTP/1.1\r\n", RequestLine("GET", "/x?y", "HTTP/1.1", "b.test")),
        ("GET HTTP://b.test:81 HTTP/1.1\r\n", RequestLine("GET", "/", "HTTP/1.1", "b.test:81")),
        ("GET https://b.test?q HTTP/1.1\r\n", RequestLine("GET", "/?q", "HTTP/1.1", "b.test")),
    ],
)
def test_request_lines_by_rfc_9112(line: str, parsed: RequestLine) -> None:
    assert parse_request_line(line) == parsed


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("G\x01T / HTTP/1.1\r\n", 400),
        ("GET\x0b/ HTTP/1.1\r\n", 400),
        ("GET\xa0/ HTTP/1.1\r\n", 400),
        ("GET / HTTP/1.1\x85\r\n", 400),
        ("GET  / HTTP/1.1\r\n", 400),
        ("GET / HTTP/1.1 \r\n", 400),
        ("GET /\xe9 HTTP/1.1\r\n", 400),
        ("GET foo HTTP/1.1\r\n", 400),
        ("GET foo\r\n", 400),
        ("GET * HTTP/1.1\r\n", 400),
        ("GET http:///x HTTP/1.1\r\n", 400),
        ("GET http://u@b.test/ HTTP/1.1\r\n", 400),
        ("GET ftp://b.test/ HTTP/1.1\r\n", 400),
        ("\r\n", 400),
        ("CONNECT b.test:443 HTTP/1.1\r\n", 405),
        ("TRACE / HTTP/1.1\r\n", 405),
        ("PRI * HTTP/2.0\r\n", 505),
        ("GET / HTTP/1.2\r\n", 505),
        ("GET / HTTP/0.9\r\n", 505),
    ],
)
def test_request_lines_refused(line: str, code: int) -> None:
    with pytest.raises(RejectedRequest) as caught:
        parse_request_line(line)
    assert caught.value.code == code
    if code == 405:
        assert b"\r\nAllow: GET, HEAD" in caught.value.response()
