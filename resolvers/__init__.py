"""Resolvers: hostname → upstream. Chosen by `-resolverType` (docs/behaviour.md §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resolvers.base import DEFAULT_ROBOTS, Resolver, RoutingError, Status, Upstream

if TYPE_CHECKING:
    from resolvers.source import Source
    from settings import Config

__all__ = [
    "DEFAULT_ROBOTS",
    "Resolver",
    "RoutingError",
    "Status",
    "Upstream",
    "make_resolver",
    "make_source",
]


def make_source(config: Config) -> Source | None:
    """The etcd source of `-etcdApi` (None: the Dummy resolver reads no etcd).

    Not started: whoever else needs a directory mirrored (the certificates) asks it first;
    the resolver starts it.
    """
    if config.resolverType == "Dummy":
        return None
    from resolvers.source import EtcdAccess

    access = EtcdAccess(
        urls=tuple(config.etcdAddress),
        ca_file=config.etcdCaFile,
        cert_file=config.etcdCertFile,
        key_file=config.etcdKeyFile,
        username=config.etcdUsername,
        password=config.etcdPassword,
    )
    if config.etcdApi == "v3":
        from resolvers.etcd3 import V3Source

        return V3Source(access)
    from resolvers.etcd2 import V2Source

    return V2Source(access, health_grace=config.healthGraceSeconds)


def make_resolver(config: Config, source: Source | None = None) -> Resolver:
    """The resolver named by `config.resolverType`, reading `source` (made when not given),
    not started yet."""
    if config.resolverType == "Dummy":
        from resolvers.dummy import DummyResolver

        return DummyResolver(config.dummyTarget)
    from resolvers.table import TableResolver

    source = source or make_source(config)
    assert source is not None
    return TableResolver(
        source,
        config.domainDir,
        config.serviceDir,
        config.lastAccessInterval,
        config.ejectSeconds,
        env=config.resolverType == "Env",
        implicit_dirs=source.implicit_dirs,
    )
