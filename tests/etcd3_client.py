"""A small etcd v3 client for the tests, on http.client, shaped like python-etcd's.

The routing tests write keys through `write`, `read` and `delete` as python-etcd's client
has them, so each test runs unchanged against etcd v2 or v3. v3 has no directories:
`write(dir=True)` writes nothing, a directory read lists the keys under it, a recursive
delete deletes every key under the path. A TTL is a lease granted for the key.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class KeyNotFound(KeyError):
    """No key (and no key under it) at the path read."""


class EtcdError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status, self.body = status, body


@dataclass
class Result:
    """A key as python-etcd's `EtcdResult` shows it (the attributes the tests use)."""

    key: str
    value: str | None = None
    modifiedIndex: int = 0  # noqa: N815 (python-etcd's names)
    createdIndex: int = 0  # noqa: N815
    etcd_index: int = 0
    dir: bool = False
    children: list[Result] = field(default_factory=list)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode("ascii")


class V3Client:
    def __init__(
        self,
        url: str,
        username: str = "",
        password: str = "",
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 2379
        self.https = parts.scheme == "https"
        self.context: ssl.SSLContext | None = None
        if self.https:
            self.context = ssl.create_default_context(cafile=ca_file or None)
            if cert_file:
                self.context.load_cert_chain(cert_file, key_file)
        self.username, self.password = username, password
        self.token: str | None = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, path: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        for attempt in range(2):
            headers = {"Content-Type": "application/json"}
            if self.username and path != "/v3/auth/authenticate":
                if self.token is None:
                    self.token = self._authenticate()
                headers["Authorization"] = self.token
            conn = self._connection(timeout)
            try:
                conn.request("POST", path, json.dumps(body), headers)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
            finally:
                conn.close()
            if status == 401 and self.username and attempt == 0:
                self.token = None
                continue
            answer = json.loads(data) if data else {}
            if status != 200:
                raise EtcdError(status, answer)
            return dict(answer)
        raise AssertionError("not reached")

    def _authenticate(self) -> str:
        answer = self.call(
            "/v3/auth/authenticate", {"name": self.username, "password": self.password}
        )
        return str(answer["token"])

    # ------------------------------------------------------------------ python-etcd's shape

    def write(
        self, key: str, value: str | None, dir: bool = False, ttl: int | None = None
    ) -> Result:
        if dir:
            return Result(key, dir=True, etcd_index=self.revision())
        put: dict[str, Any] = {"key": b64(key), "value": b64(value or "")}
        if ttl is not None:
            put["lease"] = self.grant(ttl)
        revision = int(self.call("/v3/kv/put", put)["header"]["revision"])
        return Result(key, value, revision, etcd_index=revision)

    def read(self, key: str) -> Result:
        answer = self.call("/v3/kv/range", {"key": b64(key)})
        revision = int(answer["header"]["revision"])
        for kv in answer.get("kvs", []):
            return Result(
                key,
                unb64(kv.get("value", "")),
                int(kv["mod_revision"]),
                int(kv["create_revision"]),
                revision,
            )
        prefix = key.rstrip("/") + "/"
        below = self.call(
            "/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix), "keys_only": True}
        )
        keys = [unb64(kv["key"]) for kv in below.get("kvs", [])]
        names = sorted({k[len(prefix) :].split("/")[0] for k in keys})
        if not names:
            raise KeyNotFound(key)
        children = [Result(prefix + name, etcd_index=revision) for name in names]
        return Result(key, None, etcd_index=revision, dir=True, children=children)

    def delete(self, key: str, recursive: bool = False, dir: bool = False) -> None:
        self.call("/v3/kv/deleterange", {"key": b64(key)})
        if recursive or dir:
            prefix = key.rstrip("/") + "/"
            self.call("/v3/kv/deleterange", {"key": b64(prefix), "range_end": prefix_end(prefix)})

    # ------------------------------------------------------------------ v3 only

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": b64("\0")})["header"]["revision"])

    def put(self, key: str, value: str, lease: str | None = None) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def grant(self, ttl: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def compact(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: the current one)."""
        revision = revision or self.revision()
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def history(self, key: str, since: int) -> list[Result]:
        """Every write of `key` with revision ≥ `since`, from a watch of its history.

        The catch-up history arrives in one message once the watch is created, so the
        stream is read until the key's current revision has been seen.
        """
        last = self.read(key).modifiedIndex
        if last < since:
            return []
        conn = self._connection(10)
        headers = {"Content-Type": "application/json"}
        if self.username:
            self.token = self.token or self._authenticate()
            headers["Authorization"] = self.token
        body = {"create_request": {"key": b64(key), "start_revision": str(since)}}
        found: list[Result] = []
        try:
            conn.request("POST", "/v3/watch", json.dumps(body), headers)
            resp = conn.getresponse()
            while not found or found[-1].modifiedIndex < last:
                line = resp.readline()
                if not line:
                    raise AssertionError(f"watch of {key} ended early: {found}")
                result = json.loads(line).get("result", {})
                for event in result.get("events", []):
                    kv = event["kv"]
                    value = None if event.get("type") == "DELETE" else unb64(kv.get("value", ""))
                    found.append(Result(key, value, int(kv["mod_revision"])))
        finally:
            conn.close()
        return found
