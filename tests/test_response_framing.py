"""Backend answer heads, checked without sockets: the parser and the relay decision."""

from __future__ import annotations

import email.parser
import http.client
import io

import pytest

from framing.response import InvalidAnswer, parse_headers, relay_head

VALID_BLOCKS = [
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nServer: nginx\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"Ok: y\n\n",
    b"K: \xe9\xff\r\n\r\n",  # obs-text is allowed in a value
    b"Tab:\tv\t\r\n\r\n",
    b"\r\n",
]


def email_parse(block: bytes) -> http.client.HTTPMessage:
    text = block.decode("latin-1").split("\r\n\r\n")[0].split("\n\n")[0]
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text + "\n")


@pytest.mark.parametrize("block", VALID_BLOCKS)
def test_valid_heads_parse_as_http_client_would(block: bytes) -> None:
    parsed = parse_headers(io.BytesIO(block))
    expected = email_parse(block)
    assert type(parsed) is type(expected)
    # The same names and values, but without the trailing SP/HTAB (RFC 9110 §5.5: not
    # part of the value), which the email parser keeps.
    assert parsed.items() == [(k, v.strip(" \t")) for k, v in expected.items()]
    assert parsed.get_all("Set-Cookie") == expected.get_all("Set-Cookie")


INVALID_BLOCKS = [
    b"X-Folded: a\r\n b\r\nOther: c\r\n\r\n",  # obs-fold
    b"Bad Name: x\r\n\r\n",
    b"Content-Length : 2\r\n\r\n",  # whitespace before the colon
    b"NoColon\r\n\r\n",
    b"Cut: off",  # the connection closed inside the head
    b"Cut: off\r\n",
    b"",
]


@pytest.mark.parametrize("block", INVALID_BLOCKS)
def test_heads_breaking_the_rfc_are_invalid(block: bytes) -> None:
    with pytest.raises(InvalidAnswer):
        parse_headers(io.BytesIO(block))


@pytest.mark.parametrize("byte", [b for b in range(32) if b not in (9, 10)] + [0x7F])
def test_every_control_byte_in_a_value_is_invalid(byte: int) -> None:
    with pytest.raises(InvalidAnswer):
        parse_headers(io.BytesIO(b"X-A: b" + bytes([byte]) + b"c\r\n\r\n"))


def test_the_limits_of_http_client_hold() -> None:
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"a" * 70_000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        parse_headers(io.BytesIO(b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"))


def relay(code: int, headers: list[tuple[str, str]], **kw: object):  # type: ignore[no-untyped-def]
    args = {"method": "GET", "client_version": "HTTP/1.1", "version": 11, **kw}
    return relay_head(code, "", args.pop("version"), headers, **args)  # type: ignore[arg-type]


def test_length_and_chunked_is_relayed_chunked_without_the_length_and_closes() -> None:
    head = relay(200, [("Content-Length", "0"), ("Transfer-Encoding", "chunked"), ("X", "y")])
    assert head.close
    assert ("X", "y") in head.headers
    assert not [n for n, _ in head.headers if n.lower() in ("content-length", "transfer-encoding")]
    assert ("Connection", "close") in head.headers


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "abc")],
        [("Content-Length", "-1")],
        [("Content-Length", "1, 2")],
        [("Content-Length", "1, 1")],
        [("Content-Length", "2"), ("Content-Length", "3")],
        [("Content-Length", "\xa02")],
        [("Content-Length", "4_0")],
        [("Content-Length", "1" * 19)],
        [("Transfer-Encoding", "gzip, chunked")],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "identity")],
    ],
)
def test_framing_that_cannot_be_trusted_is_invalid(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidAnswer):
        relay(200, headers)


def test_repeated_equal_lengths_are_one() -> None:
    head = relay(200, [("Content-Length", "05"), ("Content-Length", "05")])
    assert [v for n, v in head.headers if n == "Content-Length"] == ["5"]
    assert not head.close


def test_chunked_from_an_http_1_0_backend_is_invalid() -> None:
    with pytest.raises(InvalidAnswer):
        relay(200, [("Transfer-Encoding", "chunked")], version=10)


def test_101_only_answers_an_upgrade() -> None:
    with pytest.raises(InvalidAnswer):
        relay(101, [("Upgrade", "h2c")])
    assert relay(101, [("Upgrade", "websocket")], upgrade=True).status.startswith("101 ")


@pytest.mark.parametrize("code", [600, 99, 999])
def test_status_codes_out_of_range_are_invalid(code: int) -> None:
    with pytest.raises(InvalidAnswer):
        relay(code, [])


def test_a_length_less_answer_closes_only_for_an_http_1_0_client() -> None:
    assert relay(200, [], client_version="HTTP/1.0").close
    assert not relay(200, []).close  # our server chunks it for an HTTP/1.1 client
    assert not relay(204, [], client_version="HTTP/1.0").close
    assert not relay(200, [], client_version="HTTP/1.0", method="HEAD").close


def test_hop_by_hop_and_connection_named_headers_are_not_relayed() -> None:
    head = relay(
        200,
        [
            ("Connection", "x-secret, keep-alive"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("Upgrade", "h2c"),
            ("Content-Length", "2"),
            ("X-Kept", "v"),
        ],
    )
    assert head.headers == [("X-Kept", "v"), ("Content-Length", "2")]


def test_a_304_keeps_no_length() -> None:
    head = relay(304, [("Content-Length", "10"), ("ETag", '"a"')])
    assert head.headers == [("ETag", '"a"')]
