"""etcd's v3 API as its JSON gateway serves it: endpoints, calls, streams, what errors mean.

etcd's JSON gateway (`/v3/...`, every call a POST, keys and values base64) on urllib3:
gRPC clients would block gevent's loop. Knows nothing of what is watched or written, nor
of the table (docs/behaviour.md §5.4):
- the endpoints of `-etcdAddress`, one at a time, the next one on failure;
- with `-etcdUsername`, a token from `/v3/auth/authenticate`, taken again when etcd no
  longer accepts it (simple tokens expire after `--auth-token-ttl` idle seconds);
- etcd's answers sorted into errors by what the caller does next: it did not answer
  (`EtcdDown`), it refused (`EtcdRefused`: credentials, API, permissions), its history was
  compacted, another cluster answered.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import urllib3

from resolvers.endpoints import EndpointRing
from resolvers.source import EtcdAccess

REQUEST_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

# gRPC status codes etcd puts in its JSON errors
CODE_INVALID_ARGUMENT = 3  # also "authentication failed" and "user name is empty"
CODE_OUT_OF_RANGE = 11  # "required revision has been compacted"
CODE_UNAUTHENTICATED = 16  # "invalid auth token": expired, or etcd restarted


class EtcdDown(Exception):
    """etcd did not answer: no connection, a timeout, a 5xx, an error ending a stream."""


class EtcdRefused(Exception):
    """etcd answered, and said no (permissions, a bad request): retrying won't help soon."""


class BadCredentials(EtcdRefused):
    """The user or password is wrong, or etcd wants one and none is set."""


class WrongApi(EtcdRefused):
    """Nothing serves etcd's v3 API at the endpoint."""


class Compacted(Exception):
    """The revision asked for is older than etcd's compacted history."""


class ClusterChanged(Exception):
    """The endpoint belongs to another etcd cluster than the one loaded from."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def range_end(prefix: str) -> str:
    """The end of the range of every key starting with `prefix`: its last byte + 1."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode("ascii")


def error_of(data: bytes) -> tuple[int | None, str]:
    """(gRPC code, message) of one of etcd's JSON error answers."""
    try:
        body = json.loads(data)
    except ValueError:
        return None, data[:200].decode("utf-8", "replace").strip()
    if not isinstance(body, dict):
        return None, str(body)[:200]
    error = body.get("error")
    if isinstance(error, dict):  # a stream's error: {"error": {"grpc_code":..., "message":...}}
        return error.get("grpc_code"), str(error.get("message", error))
    code = body.get("code")
    return code if isinstance(code, int) else None, str(body.get("message") or error)


class Gateway(EndpointRing):
    """etcd's JSON gateway at the endpoints of `-etcdAddress`, one at a time, with a token."""

    def __init__(self, access: EtcdAccess) -> None:
        super().__init__([url.rstrip("/") for url in access.urls])
        self.access = access
        self.token: str | None = None
        self.pool = urllib3.PoolManager(
            maxsize=2,
            retries=False,
            ca_certs=access.ca_file or None,
            cert_file=access.cert_file or None,
            key_file=access.key_file or None,
            cert_reqs="CERT_REQUIRED",
        )

    def rotate(self) -> None:
        self.token = None  # each endpoint's token is its own
        super().rotate()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path`; the decoded answer. Raises EtcdDown, EtcdRefused..."""
        for attempt in range(2):
            status, data = self._post(path, body, self._headers())
            if status == 401 and self.access.username and attempt == 0:
                self.token = None  # expired (or etcd restarted): authenticate again
                continue
            return self._answer(path, status, data)
        raise AssertionError("not reached: the second attempt returns or raises")

    def stream(self, path: str, body: dict[str, Any], read_timeout: float) -> Any:
        """An open streaming answer (urllib3's response) to a POST: the caller closes it."""
        for attempt in range(2):
            try:
                resp = self.pool.urlopen(
                    "POST",
                    self.current + path,
                    body=json.dumps(body).encode(),
                    headers=self._headers(),
                    timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
                    preload_content=False,
                    redirect=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise EtcdDown(str(exc)) from exc
            if resp.status == 200:
                return resp
            try:
                data = resp.read()
            finally:
                resp.release_conn()
            if resp.status == 401 and self.access.username and attempt == 0:
                self.token = None  # as in `call`: authenticate again, once
                continue
            self._answer(path, resp.status, data)  # raises
            raise EtcdDown(f"answered {resp.status} to {path}")
        raise AssertionError("not reached: the second attempt returns or raises")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.access.username:
            if self.token is None:
                self.token = self._authenticate()
            headers["Authorization"] = self.token
        return headers

    def _authenticate(self) -> str:
        credentials = {"name": self.access.username, "password": self.access.password}
        status, data = self._post("/v3/auth/authenticate", credentials, {})
        try:
            answer = self._answer("/v3/auth/authenticate", status, data)
        except EtcdRefused as exc:
            raise BadCredentials(
                f"etcd at {self.current} refused user {self.access.username!r}: {exc}"
                " (check -etcdUsername and -etcdPassword)"
            ) from None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise BadCredentials(f"etcd at {self.current} gave no token: is auth enabled?")
        return token

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            resp = self.pool.urlopen(
                "POST",
                self.current + path,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **headers},
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=REQUEST_TIMEOUT),
                redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise EtcdDown(str(exc)) from exc
        return resp.status, resp.data

    def _answer(self, path: str, status: int, data: bytes) -> dict[str, Any]:
        where = self.current
        if status == 404:
            raise WrongApi(
                f"etcd at {where} does not serve the v3 API ({path}: 404); an etcd older"
                " than 3.4, or one serving only v2, needs -etcdApi v2"
            )
        if status >= 500:
            raise EtcdDown(f"{status} {error_of(data)[1]}")
        if status != 200:
            code, message = error_of(data)
            if code == CODE_OUT_OF_RANGE and "compacted" in message:
                raise Compacted(message)
            if status == 401 or (code == CODE_INVALID_ARGUMENT and "user name" in message):
                raise BadCredentials(
                    f"etcd at {where} wants credentials: {message} (set -etcdUsername and"
                    " GOGETA_ETCD_PASSWORD)"
                    if not self.access.username
                    else f"etcd at {where} refused user {self.access.username!r}: {message}"
                )
            raise EtcdRefused(f"etcd at {where} refused {path}: {message}")
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise EtcdDown(f"answered {path} with invalid JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise EtcdDown(f"answered {path} with {type(answer).__name__}")
        return answer


def lines_of(resp: Any) -> Iterator[bytes]:
    """The newline-separated JSON objects of a streaming answer, as they arrive."""
    pending = b""
    for chunk in resp.stream(65536, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending
