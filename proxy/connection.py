"""One keep-alive HTTP/1.1 connection to a backend, as urllib3 pools it, and its answer's head.

`AnswerHead` reads the backend's status line and headers as a proxy must (interim answers
skipped, the whole head within the read timeout, lengths strict: docs/behaviour.md §7);
`Connection` writes a request head with http.client's checks and fewer steps, and tells a
reusable pooled connection from a closed one with one peek; `Pool` is urllib3's pool of them,
with `exchange`, urlopen's short way for a bodiless request (its answer: proxy.answer).
This module knows nothing about WSGI or routing: it is given a method, a target and headers.
"""

from __future__ import annotations

import errno
import functools
import http
import http.client
import re
import socket
from typing import Any, cast

import gevent
import urllib3
import urllib3.connection
from urllib3._base_connection import _ResponseOptions
from urllib3._collections import HTTPHeaderDict
from urllib3.connection import _CONTAINS_CONTROL_CHAR_RE
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from urllib3.util import SKIP_HEADER
from urllib3.util.request import _METHODS_NOT_EXPECTING_BODY as _NO_BODY_EXPECTED
from urllib3.util.request import SKIPPABLE_HEADERS
from urllib3.util.url import _encode_target

from framing.response import (
    BODILESS,
    DIGITS,
    MAX_INTERIM,
    MAX_LINE,
    InvalidAnswer,
    parse_headers,
)
from proxy.answer import Answer, Response
from transport.sockets import sendall


@functools.lru_cache(maxsize=16)
def _head_timeout_message(deadline: float) -> str:
    return f"answer head not received within {deadline:g} s"


class AnswerHead(http.client.HTTPResponse):
    """http.client's response, reading the head as a proxy must.

    Two things http.client does not do: interim answers other than `100 Continue`
    (`103 Early Hints`, `102 Processing`) are skipped, not taken for the answer (which
    would leave the real one on a pooled connection for the next request to receive);
    and the whole head must arrive within the socket's timeout (the read timeout), not
    each read: a backend trickling its status line a byte at a time would hold the
    client forever.
    """

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        timeout = sock.gettimeout() if hasattr(sock, "gettimeout") else None
        self._head_deadline: float | None = timeout
        self._settimeout = getattr(sock, "settimeout", None)

    def begin(self) -> None:
        if self.headers is not None:
            return  # already read
        deadline = self._head_deadline
        if not deadline:
            return self._read_head()
        # Raised inside the blocking read; urllib3 reports a TimeoutError as its read timeout.
        with gevent.Timeout(deadline, TimeoutError(_head_timeout_message(deadline))):
            settimeout = self._settimeout
            if settimeout is None:
                return self._read_head()
            # The deadline bounds every wait for the head: without the socket's own timeout
            # (the same value) gevent sets no second timer each time a read waits.
            settimeout(None)
            try:
                self._read_head()
            finally:
                settimeout(deadline)

    def _read_head(self) -> None:
        """http.client's `begin`, with this module's parser and strict lengths."""
        version, status, reason = self._read_status()
        self.code = self.status = status
        self.reason = reason.strip()
        if version == "HTTP/1.0":
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11  # HTTP/1.x, x >= 1, as http.client does
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = parse_headers(self.fp)
        coding: str = self.headers.get("transfer-encoding") or ""
        self.chunked = coding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        # Only a valid length frames the body here; relay_head refuses the others (502).
        length = self.headers.get("content-length")
        self.length = None
        if length and not self.chunked and DIGITS.fullmatch(length):
            self.length = int(length)
        if status in BODILESS or 100 <= status < 200 or self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # delimited by the backend closing

    def _read_status(self) -> tuple[str, int, str]:
        """The final answer's status line: interim ones (`100`, `103`...) and their header
        blocks are dropped, `101` is final (upgrades go through proxy.tunnel)."""
        for _ in range(MAX_INTERIM):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            while True:
                line = self.fp.readline(MAX_LINE + 1)
                if len(line) > MAX_LINE:
                    raise http.client.LineTooLong("header line")
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise InvalidAnswer("the backend closed the connection inside its answer head")
        raise http.client.HTTPException(f"more than {MAX_INTERIM} interim (1xx) answers")


# The checks of http.client's `putheader`, made as strict as framing.request's: a name is a
# token (RFC 9110 §5.6.2), a value holds no control byte but HTAB (RFC 9110 §5.5). What
# reaches here already passed framing.request; these keep a bug of ours from writing a header
# line the backend would split differently.
_legal_header_name = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch
_illegal_header_value = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_CONTROL_IN_METHOD = _CONTAINS_CONTROL_CHAR_RE  # urllib3's check of a method
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# http.client.HTTPConnection's private state, as its name-mangled attributes.
_STATE, _RESPONSE = "_HTTPConnection__state", "_HTTPConnection__response"


class Connection(urllib3.connection.HTTPConnection):
    response_class = AnswerHead

    @property
    def is_connected(self) -> bool:
        """Whether a pooled connection is still open, checked before each reuse.

        urllib3 polls the socket with a zero timeout; under gevent that builds watchers and
        a Timeout every time (a few percent of the CPU per request). One non-blocking peek
        on the real socket answers the same question: nothing to read means still open;
        end of file, an error or stray bytes mean it cannot be reused.
        """
        sock = self.sock
        if sock is None:
            return False
        raw = getattr(sock, "_sock", sock)  # gevent's socket wraps the real one
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Any = None,
        *,
        chunked: bool = False,
        preload_content: bool = True,
        decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> None:
        """A bodiless request on an open connection: its head built in one piece.

        urllib3's `request` and http.client's `putrequest`/`putheader`/`endheaders` take
        many small steps per request (framing choices, default headers, a line buffer, a
        state machine): ~6 % of a proxied request's CPU. For the forwarder's usual case
        (no body; Host, User-Agent and Accept-Encoding given; no framing header) the same
        head is built here, with the same checks of the method, target and each header,
        and the same connection state afterwards; anything else goes urllib3's way.
        """
        if body is None and not chunked and self.sock is not None and not self._tunnel_host:
            head = self._bodiless_head(method, url, headers)
            if head is not None:
                self.sock.settimeout(self.timeout)
                self._response_options = _ResponseOptions(
                    request_method=method,
                    request_url=url,
                    preload_content=preload_content,
                    decode_content=decode_content,
                    enforce_content_length=enforce_content_length,
                )
                # http.client's putrequest then endheaders, on its private state.
                previous = getattr(self, _RESPONSE)
                if previous is not None and previous.isclosed():
                    setattr(self, _RESPONSE, None)
                state = getattr(self, _STATE)
                if state != http.client._CS_IDLE:  # type: ignore[attr-defined]
                    raise http.client.CannotSendRequest(state)
                self._method = method
                setattr(self, _STATE, http.client._CS_REQ_SENT)  # type: ignore[attr-defined]
                self.send(head)
                return
        super().request(
            method,
            url,
            body,
            headers,
            chunked=chunked,
            preload_content=preload_content,
            decode_content=decode_content,
            enforce_content_length=enforce_content_length,
        )

    def _bodiless_head(self, method: str, url: str, headers: Any) -> bytes | None:
        """The request head urllib3 would send without a body, or None when it would
        choose something here (a default header, a framing header, a non-str value)."""
        if not isinstance(headers, dict):
            return None
        if _CONTROL_IN_METHOD.search(method):
            raise ValueError(f"Method cannot contain non-token characters {method!r}")
        self._validate_method(method)  # type: ignore[attr-defined]
        url = url or "/"
        self._validate_path(url)  # type: ignore[attr-defined]
        lines = [f"{method} {url} HTTP/1.1".encode("ascii")]
        if method.upper() not in _NO_BODY_EXPECTED:
            lines.append(b"Content-Length: 0")  # urllib3's framing of an empty body
        given = 0
        for name, value in headers.items():
            if type(name) is not str or type(value) is not str:
                return None
            lower = name.lower()
            if lower in _FRAMING:
                return None
            if lower in SKIPPABLE_HEADERS:
                given += 1
                if value == SKIP_HEADER:
                    continue
            encoded_name = name.encode("ascii")
            encoded = value.encode("latin-1")
            if not _legal_header_name(encoded_name):
                raise ValueError(f"Invalid header name {encoded_name!r}")
            if _illegal_header_value(encoded):
                raise ValueError(f"Invalid header value {encoded!r}")
            lines.append(encoded_name + b": " + encoded)
        if given != len(SKIPPABLE_HEADERS):
            return None  # http.client or urllib3 would add Host, Accept-Encoding or User-Agent
        lines += (b"", b"")
        return b"\r\n".join(lines)

    def putheader(self, header: str, *values: str) -> None:  # type: ignore[override]
        """One request header line, with http.client's checks and none of its generality.

        urllib3 and http.client take several steps per header (a scan for urllib3's skip
        marker, a list of values, encodings, two checks, a join): together about 4 % of
        the CPU of a request with the dozen headers a browser sends. A single `str`
        value, the only kind the forwarder gives, goes the short way; anything else
        (urllib3's skip marker included) the long one.
        """
        if len(values) == 1 and type(values[0]) is str and values[0] != SKIP_HEADER:
            name = header.encode("ascii")
            value = values[0].encode("latin-1")
            if not _legal_header_name(name):
                raise ValueError(f"Invalid header name {name!r}")
            if _illegal_header_value(value):
                raise ValueError(f"Invalid header value {value!r}")
            self._output(name + b": " + value)  # type: ignore[attr-defined]
        else:
            super().putheader(header, *values)

    def send(self, data: Any) -> None:
        """The request head (and body blocks) in one system call when the kernel takes it."""
        if self.sock is not None and isinstance(data, bytes):
            sendall(self.sock, data)
        else:
            super().send(data)  # connects first if needed; file-like and iterable bodies

    def answer_head(self) -> AnswerHead:
        """The answer's head (its body unread), read within the read timeout: urllib3's
        `getresponse` without wrapping it in urllib3's own response (`Pool.exchange`)."""
        self._response_options = None
        self.sock.settimeout(self.timeout)
        return cast(AnswerHead, http.client.HTTPConnection.getresponse(self))


class Pool(urllib3.HTTPConnectionPool):
    """urllib3's pool of `Connection`s to one backend, with a short way for the usual request."""

    ConnectionCls = Connection

    def exchange(
        self, method: str, target: str, headers: dict[str, str], timeout: urllib3.Timeout
    ) -> Response:
        """`urlopen` of a bodiless request, without retries or redirects, its body unread.

        urlopen, `_make_request` and urllib3's response wrap each exchange in many steps
        (the retry policy, a copy of the timeout, a header dict copied from http.client's,
        a decoder) that the forwarder's requests never use: about a tenth of a proxied
        request's CPU. The same steps that matter are taken here, with the same errors
        (urllib3's `ProtocolError` around what broke, `ReadTimeoutError` for a silent
        backend) and the same connection handling: dropped on any error, back in the
        pool once the body is read. A chunked answer gets urllib3's own response (its
        de-chunking); any other one an `Answer`.
        """
        if not target.startswith("/") or timeout.total is not None:
            return self.urlopen(
                method,
                target,
                headers=headers,
                retries=_NO_RETRIES,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                timeout=timeout,
            )
        target = _encode_target(target)
        read_timeout = timeout.read_timeout
        conn: Connection | None = None
        try:
            conn = cast(Connection, self._get_conn())
            self.num_requests += 1
            conn.timeout = urllib3.Timeout.resolve_default_timeout(timeout.connect_timeout)
            try:
                conn.request(method, target, headers=headers, preload_content=False)
            except BrokenPipeError:
                pass  # the backend may have answered before closing: read it (urllib3 does)
            except OSError as exc:
                if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):
                    raise
            if not conn.is_closed:
                if read_timeout == 0:
                    raise ReadTimeoutError(self, target, "Read timed out. (read timeout=0)")
                conn.timeout = read_timeout
            shutdown = getattr(conn.sock, "shutdown", None)
            try:
                head = conn.answer_head()
            except OSError as exc:
                self._raise_timeout(err=exc, url=target, timeout_value=read_timeout)
                raise
        except BaseException as exc:  # urllib3's errors as they are, the others wrapped
            if conn is not None:
                conn.close()
            self._put_conn(None)
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise ProtocolError("Connection aborted.", exc) from exc
            raise
        if head.chunked:
            response = urllib3.HTTPResponse(
                body=head,
                headers=HTTPHeaderDict(head.msg.items()),
                status=head.status,
                version=head.version,
                version_string=getattr(conn, "_http_vsn_str", "HTTP/?"),
                reason=head.reason,
                preload_content=False,
                decode_content=False,
                original_response=head,
                request_method=method,
                request_url=target,
                sock_shutdown=shutdown,
                retries=_NO_RETRIES,
                connection=conn,
                pool=self,
            )
            return response
        return Answer(head, self, conn)


_NO_RETRIES = urllib3.Retry(total=False, redirect=False)
