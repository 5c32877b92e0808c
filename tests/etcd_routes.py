"""Routes written into a real etcd the way an operator writes them, and what gogeta wrote back.

Shared by the etcd test files. `Barrier` proves that a gogeta process has applied everything
written so far, so a test asserts on one answer instead of polling for it (and an
intermediate state cannot pass for the final one).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import (
    ROOT,
    Backend,
    EtcdServer,
    GogetaProcess,
    Reply,
    Response,
    Seen,
    request,
    wait_until,
)

# The status pages (docs/behaviour.md §3.2), replaced by one-line markers so that a test reads
# which page answered without depending on the design of the real templates.
STATUS_PAGES = ("notfound", "starting", "passivated", "stopped", "error")


def marker_templates(directory: Path) -> Path:
    """A copy of `templates/` whose status pages say `page=NAME code=CODE`."""
    target = directory / "templates"
    shutil.copytree(ROOT / "templates", target)
    for name in STATUS_PAGES:
        (target / f"{name}.html").write_text(f"page={name} code={{{{ code }}}}\n")
    return target


def page_of(resp: Response) -> str:
    """`name` of a marker status page, or `backend:BODY` for anything else."""
    text = resp.text.strip()
    if text.startswith("page="):
        return text.split()[0][len("page=") :]
    return f"backend:{text}"


def quick(backend: Backend) -> Backend:
    """`backend` with Nagle's algorithm off on its connections.

    The handler sends the head and the body in two writes; with Nagle on, the body waits
    for the ACK that gogeta's side delays (~40 ms), which would make each proxied request
    cost 40 ms and the tests that send hundreds of them slow.
    """
    backend.server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    return backend


def named_backend(name: str) -> Backend:
    """A backend whose every answer is its name."""

    def reply(seen: Seen) -> Reply:
        return 200, [("Content-Type", "text/plain")], name.encode()

    return quick(Backend(reply, name=name))


def echo_backend() -> Backend:
    """A backend that answers `METHOD PATH` (tests.support's default)."""
    return quick(Backend())


@contextmanager
def named_backends(*names: str) -> Iterator[dict[str, Backend]]:
    backends = {name: named_backend(name) for name in names}
    for backend in backends.values():
        backend.__enter__()
    try:
        yield backends
    finally:
        for backend in backends.values():
            backend.__exit__()


def location(port: int, host: str = "127.0.0.1") -> str:
    return json.dumps({"host": host, "port": port})


def write_domain(client: Any, hostname: str, type_: str, value: str) -> None:
    client.write(f"/domains/{hostname}/type", type_)
    client.write(f"/domains/{hostname}/value", value)


def write_instance(
    client: Any,
    service: str,
    index: str,
    port: int | None = None,
    status: tuple[str | None, str | None, str | None] | None = None,
    robots: str | None = None,
) -> str:
    """Write an instance, status before location so that it is never routable too early.

    `status` is (current, expected, alive); None members are not written. Returns the
    instance's directory.
    """
    base = f"/services/{service}/{index}"
    if status is not None:
        client.write(f"{base}/status", None, dir=True)
        for name, value in zip(("current", "expected", "alive"), status, strict=True):
            if value is not None:
                client.write(f"{base}/status/{name}", value)
    if robots is not None:
        client.write(f"{base}/config/gogeta", json.dumps({"robots": robots}))
    if port is not None:
        client.write(f"{base}/location", location(port))
    else:
        client.write(f"{base}/domain", f"{service}.example.com")  # the instance must exist
    return base


def etcd_index(client: Any) -> int:
    """etcd's current index (of its last write), or its revision for a v3 client."""
    if hasattr(client, "revision"):
        return int(client.revision())
    return int(client.read("/").etcd_index)


def key_writes(client: Any, key: str, since: int) -> list[Any]:
    """Every write of `key` with index ≥ `since`, from etcd's event history.

    Walks the history with watches, each answered at once because the key's current
    `modifiedIndex` proves an event at or after the waitIndex exists.
    """
    if hasattr(client, "history"):  # v3: one watch from `since` replays them all
        return list(client.history(key, since))
    last = int(client.read(key).modifiedIndex)
    writes = []
    index = since
    while index <= last:
        event = client.read(key, wait=True, waitIndex=index, timeout=5)
        writes.append(event)
        index = int(event.modifiedIndex) + 1
    return writes


def store_stats(server: EtcdServer) -> dict[str, int]:
    """etcd's v2 store counters (`compareAndSwapSuccess`, `setsSuccess`...)."""
    resp = request(server.client_port, "/v2/stats/store", host="127.0.0.1")
    assert resp.status == 200, resp.text
    return {k: v for k, v in json.loads(resp.body).items() if isinstance(v, int)}


def answer_with(proxy: GogetaProcess, host: str, status: int, timeout: float = 10) -> Response:
    """The first answer for `host` with this status, polling until the deadline."""
    answers: list[Response] = []

    def answered() -> bool:
        answers.append(proxy.get(host=host))
        return answers[-1].status == status

    wait_until(answered, timeout=timeout, what=f"{host} to answer {status}")
    return answers[-1]


def log_count(proxy: GogetaProcess, text: str) -> int:
    return sum(1 for line in proxy.log().splitlines() if text in line)


class Barrier:
    """Writes a new service and then its domain, and waits until gogeta routes it.

    Each tree is watched in order, so once `syncN.barrier` answers, gogeta has applied every
    key written before in both `/domains` and `/services`. With `writer=True` it also waits
    for that request's `lastAccess`, which gogeta writes after anything it queued earlier
    (wake-ups, other lastAccess), then for gogeta to have applied what those writes did.
    """

    # Names are never reused in a test run: gogeta keeps per-instance state (lastAccess
    # times) across a deletion, which would hide a barrier's lastAccess.
    _numbers = itertools.count(1)

    def __init__(self, client: Any, backend: Backend) -> None:
        self.client = client
        self.backend = backend

    def __call__(self, proxy: GogetaProcess, writer: bool = False) -> None:
        name = f"sync{next(self._numbers)}"
        base = write_instance(self.client, name, "1", self.backend.port)
        write_domain(self.client, f"{name}.barrier", "service", name)
        wait_until(
            lambda: proxy.get(host=f"{name}.barrier").status == 200,
            timeout=10,
            what=f"gogeta to route {name}.barrier",
        )
        if writer:
            wait_until(
                lambda: self.client.read(f"{base}/lastAccess").value,
                timeout=10,
                what=f"gogeta to write {base}/lastAccess",
            )
            self(proxy)
