"""gogeta's own paths under `/__gogeta/`, answered for any Host, before any routing.

- `health`: 200 once the resolver has loaded its table and etcd has not been unreachable
  for longer than `-healthGraceSeconds`; 503 otherwise, with the reason. For load
  balancers and the Docker HEALTHCHECK, so open to every client.
- `routes`: `Resolver.describe()` (the live table and sync state) as JSON; with `q`,
  `page` or `per_page` in the query string, one page of it; with `-tlsPort` the
  certificates served too (`tls`: state, expiry, why one is skipped; never a key).
- `metrics`: Prometheus text (`proxy.metrics`).
- `` (the prefix itself) and `live`: the operator's live view and its JSON (`proxy.live`).

All but `health` show the customers' table and traffic: only clients whose address is in
`-trustedNetworks` get them; others get the same 404 page as an unknown path. Every
answer carries `Cache-Control: no-store`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs

import gevent

from proxy.live import LiveView
from proxy.metrics import Metrics
from proxy.pages import StatusPages
from proxy.trust import Network, is_trusted
from resolvers.base import Resolver

PREFIX = "/__gogeta/"
TRUSTED_ONLY = frozenset({"routes", "metrics", "", "live"})
# The live page runs its own script and stylesheet only (no inline code, nothing from elsewhere).
PAGE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]

StartResponse = Callable[..., Any]


def health_of(described: dict[str, Any], grace: float, now: float) -> tuple[int, dict[str, Any]]:
    """HTTP code and JSON body of `health` for a resolver's `stats()`."""
    since = described.get("unreachable_since")
    body: dict[str, Any] = {
        "status": "ok",
        "resolver": described.get("resolver"),
        "loaded": bool(described.get("loaded")),
        "etcd_index": described.get("etcd_index"),
        "etcd_unreachable_seconds": None if since is None else round(now - since, 1),
        "pid": os.getpid(),
    }
    # What etcd last said or did (wrong credentials, wrong API...) tells the operator why.
    problem = described.get("etcd_problem")  # etcd answers, but refuses: say why
    error = described.get("last_error")
    why = f": {error}" if error else ""
    if not body["loaded"]:
        body.update(status="unavailable", reason=problem or f"routing table not loaded yet{why}")
        return 503, body
    if since is not None and now - since > grace:
        reason = problem or f"etcd unreachable for {now - since:.0f}s{why}"
        body.update(status="unavailable", reason=reason)
        return 503, body
    return 200, body


def page_request(query_string: str) -> tuple[str, int, int] | None:
    """(query, page, per page) from `q`, `page` and `per_page`; None when none is given.

    Values that are no numbers fall back to the first page and 200 a page.
    """
    fields = parse_qs(query_string, keep_blank_values=True)
    if not fields.keys() & {"q", "page", "per_page"}:
        return None

    def number(name: str, default: int) -> int:
        try:
            return int(fields.get(name, [""])[0])
        except ValueError:
            return default

    return fields.get("q", [""])[0], number("page", 1), number("per_page", 200)


class Admin:
    def __init__(
        self,
        resolver: Resolver,
        pages: StatusPages,
        metrics: Metrics,
        trusted: Sequence[Network],
        health_grace: float,
        certificates: Callable[[], dict[str, Any]] | None = None,
        live: LiveView | None = None,
    ) -> None:
        self.certificates = certificates
        self.live = live
        self.resolver = resolver
        self.pages = pages
        self.metrics = metrics
        self.trusted = tuple(trusted)
        self.health_grace = health_grace

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        name = environ.get("PATH_INFO", "")[len(PREFIX) :]
        method = environ.get("REQUEST_METHOD")
        if self.live is None and name in ("", "live"):
            name = "-"  # no live view: an unknown path
        if name == "health" or (
            name in TRUSTED_ONLY and is_trusted(environ.get("REMOTE_ADDR"), self.trusted)
        ):
            if method not in ("GET", "HEAD"):
                return self._send(
                    start_response,
                    405,
                    "text/plain; charset=utf-8",
                    b"GET or HEAD\n",
                    method,
                    [("Allow", "GET, HEAD")],
                )
            if name == "health":
                code, body = health_of(self.resolver.stats(), self.health_grace, time.time())
                return self._json(start_response, code, body, method)
            paged = page_request(environ.get("QUERY_STRING", ""))
            if name == "routes":
                routes = self.resolver.describe(*paged) if paged else self.resolver.describe()
                if self.certificates is not None:
                    routes["tls"] = self.certificates()
                if paged:
                    return self._json(start_response, 200, routes, method)
                # The whole table: megabytes at 100,000 domains, sent a piece at a time.
                return self._json_stream(start_response, routes, method)
            if self.live is not None and name == "live":
                overview = self.live.overview(*(paged or ("", 1, 200)))
                return self._json(start_response, 200, overview, method, compact=True)
            if self.live is not None and name == "":
                return self._send(
                    start_response,
                    200,
                    "text/html; charset=utf-8",
                    self.live.page,
                    method,
                    PAGE_HEADERS,
                )
            return self._metrics(start_response, method)
        page = self.pages.render("notfound", 404)
        start_response(page.status, page.headers)
        return [page.body]

    def _json(
        self,
        start_response: StartResponse,
        code: int,
        body: Any,
        method: str | None,
        compact: bool = False,  # for a program polling it (the live page): no indentation
    ) -> Iterable[bytes]:
        if compact:
            text = json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)
        else:
            text = json.dumps(body, indent=1, sort_keys=True, default=str)
        data = text.encode() + b"\n"
        return self._send(start_response, code, "application/json", data, method)

    def _metrics(self, start_response: StartResponse, method: str | None) -> Iterable[bytes]:
        """The Prometheus page, a family at a time with other requests' turns in between:
        at the label bounds it is ~13,000 samples, and whole it would stall them all."""
        content_type, pieces = self.metrics.pieces()
        start_response("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-store")])
        if method == "HEAD":
            return [b""]
        return _with_turns(pieces)

    @staticmethod
    def _json_stream(
        start_response: StartResponse, body: Any, method: str | None
    ) -> Iterable[bytes]:
        """A large JSON answer, encoded and sent 64 KB at a time, letting other requests
        run in between (the server sends it chunked, or until it closes for HTTP/1.0)."""
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        )
        if method == "HEAD":
            return [b""]
        return _pieces(json.JSONEncoder(indent=1, sort_keys=True, default=str).iterencode(body))

    @staticmethod
    def _send(
        start_response: StartResponse,
        code: int,
        content_type: str,
        data: bytes,
        method: str | None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Iterable[bytes]:
        reasons = {200: "OK", 405: "Method Not Allowed", 503: "Service Unavailable"}
        start_response(
            f"{code} {reasons[code]}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                *extra,
            ],
        )
        return [b"" if method == "HEAD" else data]


# A large page of ours runs this long at most between two turns (a piece more at worst): on
# a machine whose CPUs are shared, a process's 2 ms can take several times that long.
PAGE_TURN_SECONDS = 0.002


def _with_turns(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The pieces, joined into one write per `PAGE_TURN_SECONDS` of making them, each write
    followed by a turn for the other greenlets (docs/behaviour.md §2): the metrics page at
    its bounds (under 1 ms of CPU once scraped, only the children that moved written again)
    goes out in one write, without waiting for other requests' turns at every family; its
    first scrape, which writes every child, in several."""
    held: list[bytes] = []
    since = time.perf_counter()
    for piece in pieces:
        held.append(piece)
        if time.perf_counter() - since >= PAGE_TURN_SECONDS:
            yield b"".join(held)
            held.clear()
            gevent.sleep(0)
            since = time.perf_counter()
    yield b"".join(held)


def _pieces(parts: Iterable[str], size: int = 64 * 1024) -> Iterator[bytes]:
    """The parts (a JSON encoder's), one write per `size` characters or `PAGE_TURN_SECONDS`
    of making them, whichever comes first, each followed by a turn for the others. The
    clock is read every `_CLOCK_EVERY` parts: most parts are a few characters."""
    buffer: list[str] = []
    held = 0
    since = time.perf_counter()
    for n, part in enumerate(parts, 1):
        buffer.append(part)
        held += len(part)
        if held >= size or (
            n % _CLOCK_EVERY == 0 and time.perf_counter() - since >= PAGE_TURN_SECONDS
        ):
            yield "".join(buffer).encode()
            buffer.clear()
            held = 0
            gevent.sleep(0)
            since = time.perf_counter()
    buffer.append("\n")
    yield "".join(buffer).encode()


_CLOCK_EVERY = 256
