"""A mirror of `certDir` (docs/behaviour.md §9): `/certs/{hostname}/cert|key` → PEM pairs.

Pure, like the routing mirrors beside it (resolvers/tree.py): fed with `Node`s by any
source, no I/O, no TLS. It only keeps the texts per hostname and says which hostnames
changed since it was last asked (`take_changes`), so that whoever builds TLS contexts
from them (transport/tls.py) rebuilds only those. Never logs a value: keys are secrets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from resolvers.nodes import DELETE_ACTIONS, Node, Pause, no_pause

FIELDS = ("cert", "key")


class CertPair(NamedTuple):
    """The PEM texts stored for one hostname; either may be missing while it is written."""

    cert: str | None = None
    key: str | None = None


def hostname_of_key(name: str) -> str:
    """The hostname a `certDir` subdirectory names: lower case, without a trailing dot."""
    return name.lower().rstrip(".")


class CertTree:
    """`{prefix}/{hostname}/cert` and `/key` → `pairs[hostname]`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pairs: dict[str, CertPair] = {}
        self._changed: set[str] = set()

    def _parts(self, key: str) -> list[str] | None:
        if key == self.prefix or key == self.prefix + "/":
            return []
        if not key.startswith(self.prefix + "/"):
            return None
        return key[len(self.prefix) + 1 :].rstrip("/").split("/")

    def load(self, nodes: Iterable[Node], pause: Pause = no_pause) -> None:
        pairs: dict[str, dict[str, str]] = {}
        for node in nodes:
            parts = self._parts(node.key)
            if not parts or len(parts) != 2 or node.dir or node.value is None:
                continue
            host = hostname_of_key(parts[0])
            if host and parts[1] in FIELDS:
                pairs.setdefault(host, {})[parts[1]] = node.value
        loaded = {h: CertPair(f.get("cert"), f.get("key")) for h, f in pairs.items()}
        # A reload (etcd lost our index) changes only what differs from what we had.
        for host in loaded.keys() | self.pairs.keys():
            if loaded.get(host) != self.pairs.get(host):
                self._changed.add(host)
        self.pairs = loaded

    def apply(self, node: Node, action: str) -> bool:
        """Apply one event; True when a hostname's pair changed."""
        parts = self._parts(node.key)
        if parts is None:
            return False
        deleted = action in DELETE_ACTIONS
        if not parts:  # the whole directory
            if not deleted:
                return False
            self._changed.update(self.pairs)
            self.pairs = {}
            return True
        host = hostname_of_key(parts[0])
        if not host:
            return False
        if len(parts) == 1:
            if deleted and host in self.pairs:
                del self.pairs[host]
                self._changed.add(host)
                return True
            return False
        if len(parts) != 2 or parts[1] not in FIELDS:
            return False
        old = self.pairs.get(host, CertPair())
        value = None if deleted or node.dir else node.value
        new = old._replace(**{parts[1]: value})
        if new == old:
            return False
        if new == CertPair():
            del self.pairs[host]
        else:
            self.pairs[host] = new
        self._changed.add(host)
        return True

    def take_changes(self) -> dict[str, CertPair | None]:
        """Each hostname changed since the last call → its pair now (None: gone)."""
        changed, self._changed = self._changed, set()
        return {host: self.pairs.get(host) for host in sorted(changed)}


class ChallengeTree:
    """`{prefix}/{token}` → `answers[token]`: the HTTP-01 key authorizations being asked for
    (docs/behaviour.md §10), written by whichever gogeta orders, answered by every one."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.answers: dict[str, str] = {}

    def answer(self, token: str) -> str | None:
        """The key authorization for `token`, None when no order asks for it."""
        return self.answers.get(token)

    def _token(self, key: str) -> str | None:
        token = key[len(self.prefix) + 1 :] if key.startswith(self.prefix + "/") else ""
        return token if token and "/" not in token else None

    def load(self, nodes: Iterable[Node], pause: Pause = no_pause) -> None:
        answers = {}
        for node in nodes:
            token = self._token(node.key)
            if token is not None and not node.dir and node.value is not None:
                answers[token] = node.value
        self.answers = answers

    def apply(self, node: Node, action: str) -> bool:
        token = self._token(node.key)
        if token is None:
            if node.key.rstrip("/") == self.prefix and action in DELETE_ACTIONS:
                self.answers = {}
                return True
            return False
        if action in DELETE_ACTIONS or node.dir or node.value is None:
            return self.answers.pop(token, None) is not None
        self.answers[token] = node.value
        return True
