"""A cluster of real etcd processes for tests: three members on loopback, one leader.

Each member is tests.support's `EtcdServer` (v2 and v3 both served, https when given TLS
files); nothing here depends on which etcd API gogeta speaks: the v2 and v3 tests share it.
"""

from __future__ import annotations

from pathlib import Path

from tests.pki import TlsFiles
from tests.support import EtcdServer, wait_until


class EtcdCluster:
    """Three etcd members on loopback ports, one `--initial-cluster` naming all three."""

    def __init__(self, directory: Path, size: int = 3, tls: TlsFiles | None = None) -> None:
        self.members = [EtcdServer(directory / f"m{i}", tls=tls, name=f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.launch()
        for member in self.members:
            wait_until(member.healthy, timeout=60, what=f"cluster member {member.name}")
        return self

    def running(self) -> list[EtcdServer]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def leader(self) -> EtcdServer:
        """The member the running ones agree leads (waits for an election to settle)."""

        def agreed() -> EtcdServer | None:
            running = self.running()
            leaders = {m.leader_id() for m in running}
            if len(leaders) != 1 or "" in leaders or "0" in leaders:
                return None
            (leader,) = leaders
            return next((m for m in running if m.member_id() == leader), None)

        return wait_until(agreed, timeout=30, what="one leader")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
