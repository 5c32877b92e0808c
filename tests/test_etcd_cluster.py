"""A real 3-member etcd cluster losing its leader under traffic, through either API.

Three etcd processes on loopback ports, `-etcdAddress` listing all three with the leader
first (so gogeta's watches are on the member that dies): requests keep flowing from the
last table, and a change written through a survivor arrives.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd3_client import V3Client
from tests.etcd_nodes import EtcdCluster
from tests.support import EtcdServer, Start, wait_until
from tests.test_faults import Load, backend_process, route, routed


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


def client_of(member: EtcdServer, api: str) -> Any:
    """Writes through `api`: python-etcd for v2, the gateway for v3 (the members serve both)."""
    return V3Client(member.url) if api == "v3" else member.client()


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_leader_killed_under_traffic(gogeta: Start, cluster: EtcdCluster, api: str) -> None:
    leader = cluster.leader()
    others = [m for m in cluster.members if m is not leader]
    with backend_process("one") as (_, port1), backend_process("two") as (_, port2):
        route(client_of(leader, api), "cluster.test", "cl", [port1])
        urls = [leader.url] + [m.url for m in others]
        proxy = gogeta("-etcdAddress", ",".join(urls), "-etcdApi", api, "-healthGraceSeconds", "5")
        wait_until(routed(proxy, "cluster.test", b"one"), what="route")
        with Load(proxy.port, "cluster.test") as load:
            load.wait_for(100)
            leader.kill(signal.SIGKILL)
            load.wait_for(100)  # the last table keeps serving

            def moved() -> bool:  # refused until the survivors elect a leader: try again
                client_of(others[0], api).write(
                    "/services/cl/1/location", json.dumps({"host": "127.0.0.1", "port": port2})
                )
                return True

            wait_until(moved, timeout=30, what="a write through a survivor")
            wait_until(lambda: load.bodies[b"two"] > 20, timeout=30, what="the change routed")
        assert load.results == Counter({"200": load.total()}), load.results
    assert cluster.leader() in others
    assert proxy.get("/__gogeta/health").status == 200
