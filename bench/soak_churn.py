"""The soak's routing table: its owner, applying one churn operation per tick in etcd.

Rule: the only writer of etcd during a soak. It plays the orchestrator too: when gogeta
writes `expected=started` on a passivated instance, it sets `current=starting`, then
`started` with `alive`. Instances 1 and 2 of a stable service are never touched.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import etcd

STABLE_SERVICES = 3
CHURN_SERVICES = 4
INDEXES = ("1", "2", "3", "4", "5")  # a churn service's instances come from these


class EtcdV2(Protocol):
    """What the soak uses of python-etcd's (untyped) `etcd.Client`."""

    def write(self, key: str, value: str, **kw: Any) -> Any: ...
    def delete(self, key: str, **kw: Any) -> Any: ...
    def read(self, key: str, **kw: Any) -> Any: ...


def stable_domain(i: int) -> str:
    return f"stable-{i}.soak.test"


def churn_domain(i: int) -> str:
    return f"churn-{i}.soak.test"


@dataclass
class Inst:
    """What the soak wrote for one instance. `state`: started, started-bare (no status
    directory), starting, passivated, stopped, expiring (alive left to expire)."""

    port: int
    state: str
    since: float = field(default_factory=time.monotonic)


class Churn:
    """The routing table's owner: applies one operation per tick, plays the orchestrator."""

    def __init__(
        self, client: EtcdV2, backend_ports: list[int], dead_ports: list[int], rng: random.Random
    ) -> None:
        self.client = client
        self.backend_ports = backend_ports
        self.dead_ports = dead_ports
        self.rng = rng
        self.services: dict[str, dict[str, Inst]] = {}
        self.domains: dict[str, str] = {}  # churn domain → service, when it exists
        self.ops: Counter[str] = Counter()
        self.writes = 0
        self.errors: Counter[str] = Counter()
        self.wakeups_seen = 0
        self.wake_latencies: list[float] = []
        self.passivated_at: dict[tuple[str, str], float] = {}
        self.domains_deleted: dict[int, float] = {}

    def operations(self) -> int:
        """Operations applied (`stable-extra:*` entries only detail `stable-extra`)."""
        return sum(v for k, v in self.ops.items() if ":" not in k)

    # ---- etcd writes

    def _write(self, key: str, value: str, **kw: Any) -> None:
        self.client.write(key, value, **kw)
        self.writes += 1

    def _delete(self, key: str) -> None:
        with contextlib.suppress(etcd.EtcdKeyNotFound):
            self.client.delete(key, recursive=True, dir=True)
        self.writes += 1

    def _location(self, service: str, index: str, port: int) -> None:
        self._write(
            f"/services/{service}/{index}/location",
            json.dumps({"host": "127.0.0.1", "port": port}),
        )

    def _status(self, service: str, index: str, current: str, expected: str) -> None:
        base = f"/services/{service}/{index}/status"
        self._write(f"{base}/expected", expected)
        self._write(f"{base}/current", current)

    def _started(self, service: str, index: str, alive_ttl: int | None = None) -> None:
        base = f"/services/{service}/{index}/status"
        self._write(f"{base}/alive", "1", ttl=alive_ttl)
        self._write(f"{base}/expected", "started")
        self._write(f"{base}/current", "started")

    def add(self, service: str, index: str, port: int, bare: bool = False) -> None:
        """A new instance, routable: location and status written, location last."""
        self._delete(f"/services/{service}/{index}")
        if not bare:
            self._started(service, index)
        self._location(service, index, port)
        self.services.setdefault(service, {})[index] = Inst(
            port, "started-bare" if bare else "started"
        )

    # ---- setup

    def setup(self) -> None:
        ports = self.backend_ports
        for i in range(STABLE_SERVICES):
            name = f"stable-{i}"
            # Instances 1 and 2 on two different backends, never touched again.
            self.add(name, "1", ports[i % len(ports)], bare=True)
            self.add(name, "2", ports[(i + 1) % len(ports)])
            self.add(name, "3", ports[(i + 2) % len(ports)])
            self._write(f"/domains/{stable_domain(i)}/type", "service")
            self._write(f"/domains/{stable_domain(i)}/value", name)
        for i in range(CHURN_SERVICES):
            name = f"churn-{i}"
            for index in INDEXES[:2]:
                self.add(name, index, self.rng.choice(ports))
            self._domain(i, name)

    def _domain(self, i: int, service: str) -> None:
        self._write(f"/domains/{churn_domain(i)}/type", "service")
        self._write(f"/domains/{churn_domain(i)}/value", service)
        self.domains[churn_domain(i)] = service

    # ---- one tick

    def tick(self) -> None:
        try:
            self.orchestrate()
        except etcd.EtcdException as exc:
            self.errors[type(exc).__name__] += 1
        op = self.rng.choices(
            [
                "add",
                "remove",
                "move",
                "move-dead",
                "stop",
                "start",
                "passivate",
                "passivate-service",
                "alive-expire",
                "stable-extra",
                "service-recreate",
                "domain-recreate",
                "domain-retarget",
            ],
            weights=[12, 10, 14, 3, 8, 10, 6, 6, 4, 14, 2, 3, 2],
        )[0]
        try:
            applied = self._apply(op)
        except etcd.EtcdException as exc:
            self.errors[type(exc).__name__] += 1
            return
        if applied:
            self.ops[op] += 1

    def _apply(self, op: str) -> bool:
        rng = self.rng
        if op == "stable-extra":
            name = f"stable-{rng.randrange(STABLE_SERVICES)}"
            sub = rng.choice(
                ["remove", "add", "move", "move-dead", "stop", "start", "passivate", "expire"]
            )
            applied = self._instance_op(name, "3", sub)
            if applied:
                self.ops[f"stable-extra:{sub}"] += 1
            return applied
        if op in ("domain-recreate", "domain-retarget"):
            i = rng.randrange(CHURN_SERVICES)
            domain = churn_domain(i)
            if op == "domain-retarget":
                self._domain(i, f"churn-{rng.randrange(CHURN_SERVICES)}")
            elif domain in self.domains:
                # Deleted, then written again by `orchestrate` about a second later.
                self._delete(f"/domains/{domain}")
                del self.domains[domain]
                self.domains_deleted[i] = time.monotonic()
            else:
                return False
            return True
        name = f"churn-{rng.randrange(CHURN_SERVICES)}"
        instances = self.services.setdefault(name, {})
        if op == "service-recreate":
            self._delete(f"/services/{name}")
            instances.clear()
            for index in rng.sample(INDEXES, rng.randint(1, 2)):
                self.add(name, index, rng.choice(self.backend_ports))
            return True
        if op == "passivate-service":
            if not instances:
                return False
            for index in instances:
                self._passivate(name, index)
            return True
        if op == "add":
            free = [i for i in INDEXES if i not in instances]
            if not free:
                return False
            self.add(name, rng.choice(free), rng.choice(self.backend_ports), rng.random() < 0.3)
            return True
        if not instances:
            return False
        sub = {"alive-expire": "expire"}.get(op, op)
        return self._instance_op(name, rng.choice(sorted(instances)), sub)

    def _instance_op(self, name: str, index: str, op: str) -> bool:
        instances = self.services.setdefault(name, {})
        inst = instances.get(index)
        if op == "add":
            if inst is not None:
                return False
            self.add(name, index, self.rng.choice(self.backend_ports))
            return True
        if inst is None:
            return False
        now = time.monotonic()
        if op == "remove":
            self._delete(f"/services/{name}/{index}")
            del instances[index]
        elif op in ("move", "move-dead"):
            pool = self.dead_ports if op == "move-dead" else self.backend_ports
            inst.port = self.rng.choice([p for p in pool if p != inst.port] or pool)
            self._location(name, index, inst.port)
        elif op == "stop":
            self._status(name, index, "stopped", "stopped")
            inst.state, inst.since = "stopped", now
        elif op == "start":
            if inst.state in ("started", "started-bare"):
                return False
            self._started(name, index)
            inst.state, inst.since = "started", now
        elif op == "passivate":
            self._passivate(name, index)
        elif op == "expire":
            base = f"/services/{name}/{index}/status"
            self._write(f"{base}/alive", "1", ttl=1)  # etcd expires it about a second later
            if inst.state not in ("started", "starting"):
                self._write(f"{base}/expected", "started")
                self._write(f"{base}/current", "started")
            inst.state, inst.since = "expiring", now
        else:
            raise ValueError(op)
        return True

    def _passivate(self, name: str, index: str) -> None:
        inst = self.services[name][index]
        self._status(name, index, "stopped", "passivated")
        inst.state, inst.since = "passivated", time.monotonic()
        self.passivated_at[(name, index)] = inst.since

    def orchestrate(self) -> None:
        """Start what gogeta woke up: passivated + expected=started → starting → started.

        Also writes again the domains deleted a second ago.
        """
        now = time.monotonic()
        for i, deleted in list(self.domains_deleted.items()):
            if now - deleted > 1.0:
                self._domain(i, f"churn-{i}")
                del self.domains_deleted[i]
        for name, instances in self.services.items():
            expected: dict[str, str] = {}
            if any(inst.state == "passivated" for inst in instances.values()):
                with contextlib.suppress(etcd.EtcdKeyNotFound):
                    for node in self.client.read(f"/services/{name}", recursive=True).leaves:
                        parts = node.key.split("/")
                        if len(parts) == 6 and parts[4:] == ["status", "expected"]:
                            expected[parts[3]] = node.value
            for index, inst in instances.items():
                if inst.state == "passivated":
                    if expected.get(index) == "started":  # gogeta's wake-up write
                        self.wakeups_seen += 1
                        asked = self.passivated_at.pop((name, index), inst.since)
                        self.wake_latencies.append(now - asked)
                        self._write(f"/services/{name}/{index}/status/current", "starting")
                        inst.state, inst.since = "starting", now
                elif inst.state == "starting" and now - inst.since > 0.3:
                    self._started(name, index)
                    inst.state, inst.since = "started", now
