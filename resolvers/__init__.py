"""Resolvers: hostname → upstream. Chosen by `-resolverType` (docs/behaviour.md §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resolvers.base import DEFAULT_ROBOTS, Resolver, RoutingError, Status, Upstream

if TYPE_CHECKING:
    from settings import Config

__all__ = ["DEFAULT_ROBOTS", "Resolver", "RoutingError", "Status", "Upstream", "make_resolver"]


def make_resolver(config: Config) -> Resolver:
    """The resolver named by `config.resolverType`, not started yet."""
    if config.resolverType == "Dummy":
        from resolvers.dummy import DummyResolver

        return DummyResolver(config.dummyTarget)
    from resolvers.source import EtcdAccess, Source
    from resolvers.table import TableResolver

    access = EtcdAccess(
        urls=tuple(config.etcdAddress),
        ca_file=config.etcdCaFile,
        cert_file=config.etcdCertFile,
        key_file=config.etcdKeyFile,
        username=config.etcdUsername,
        password=config.etcdPassword,
    )
    source: Source
    if config.etcdApi == "v3":
        from resolvers.etcd3 import V3Source

        source = V3Source(access)
    else:
        from resolvers.etcd2 import V2Source

        source = V2Source(access, health_grace=config.healthGraceSeconds)
    return TableResolver(
        source,
        config.domainDir,
        config.serviceDir,
        config.lastAccessInterval,
        config.ejectSeconds,
        env=config.resolverType == "Env",
        implicit_dirs=config.etcdApi == "v3",  # v3 has keys only
    )
