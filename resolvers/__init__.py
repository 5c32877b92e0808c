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
    from resolvers.etcd2 import V2Source
    from resolvers.source import EtcdAccess
    from resolvers.table import TableResolver

    access = EtcdAccess(
        urls=tuple(config.etcdAddress),
        ca_file=config.etcdCaFile,
        cert_file=config.etcdCertFile,
        key_file=config.etcdKeyFile,
        username=config.etcdUsername,
        password=config.etcdPassword,
    )
    return TableResolver(
        V2Source(access),
        config.domainDir,
        config.serviceDir,
        config.lastAccessInterval,
        config.ejectSeconds,
        env=config.resolverType == "Env",
    )
