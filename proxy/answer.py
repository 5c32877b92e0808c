"""A backend's answer as the forwarder reads it: its head already read, its body not.

`Response` is what the forwarder uses of one (urllib3's response has it too); `Answer` is
the one `Pool.exchange` gives for an answer framed by its length or by the backend
closing: the body read straight from http.client's response, urllib3's errors when it
breaks, the connection back in its pool once the body is read whole (docs/behaviour.md
§2.5, §7). This module knows nothing about WSGI or routing.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from urllib3.exceptions import IncompleteRead, ProtocolError, ReadTimeoutError

if TYPE_CHECKING:
    from proxy.connection import AnswerHead, Connection, Pool

BLOCK = 64 * 1024  # bytes read at most at once from a body


class Response(Protocol):
    """What the forwarder reads of an answer: urllib3's response or an `Answer`."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def version(self) -> int: ...
    @property
    def headers(self) -> Any: ...  # `.items()`: (name, value) pairs as received
    @property
    def chunked(self) -> bool: ...

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes: ...
    def stream(
        self, amt: int | None = ..., decode_content: bool | None = None
    ) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    def release_conn(self) -> None: ...


class Answer:
    """An answer framed by its length or by the backend closing, read straight from
    http.client's response: the parts of urllib3's response the forwarder uses.

    As urllib3 does: a body shorter than its Content-Length is a `ProtocolError`
    (IncompleteRead), a silence longer than the read timeout a `ReadTimeoutError`, any
    other failure a `ProtocolError`, and then the connection is closed; the connection
    goes back to the pool once the body is read whole.
    """

    __slots__ = ("_conn", "_head", "_pool", "_received", "headers", "reason", "status", "version")

    chunked = False

    def __init__(self, head: AnswerHead, pool: Pool, conn: Connection) -> None:
        self._head = head
        self._pool: Pool | None = pool
        self._conn: Connection | None = conn
        self._received = 0
        self.status: int = head.status
        self.reason: str = head.reason
        self.version: int = head.version
        self.headers = head.msg

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """At most `amt` bytes of the body, from one read; b"" once it is all read."""
        head = self._head
        fp = head.fp
        if fp is None:
            return b""
        left: int | None = head.length  # None: until the backend closes
        want = amt if amt is not None and amt >= 0 else BLOCK
        if left is not None and left < want:
            want = left
        try:
            data: bytes = fp.read1(want) if want else b""
        except TimeoutError as exc:
            self._drop()
            raise ReadTimeoutError(self._pool, None, "Read timed out.") from exc  # type: ignore[arg-type]
        except (http.client.HTTPException, OSError) as exc:
            self._drop()
            raise ProtocolError(f"Connection broken: {exc!r}", exc) from exc
        self._received += len(data)
        if left is None:
            if not data:  # the backend closed: the end (http.client closed the connection)
                head.close()
                self.release_conn()
            return data
        left -= len(data)
        head.length = left
        if not left:
            head.close()
            self.release_conn()
        elif not data:
            self._drop()
            error = IncompleteRead(self._received, left)
            raise ProtocolError(f"Connection broken: {error!r}", error)
        return data

    def stream(
        self, amt: int | None = BLOCK, decode_content: bool | None = None
    ) -> Iterator[bytes]:
        while block := self.read1(amt):
            yield block

    def _drop(self) -> None:
        self._head.close()
        if self._conn is not None:
            self._conn.close()
        self.release_conn()

    def close(self) -> None:
        """urllib3's `close`: the body is not read further, the connection not reused."""
        self._head.close()
        if self._conn is not None:
            self._conn.close()

    def release_conn(self) -> None:
        pool, conn = self._pool, self._conn
        if pool is not None and conn is not None:
            self._conn = None
            pool._put_conn(conn)
