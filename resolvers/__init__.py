"""Resolvers: hostname → upstream. Chosen by `-resolverType` (docs/behaviour.md §5)."""

from __future__ import annotations

from typing import Any

from resolvers.base import DEFAULT_ROBOTS, Resolver, RoutingError, Status, Upstream

__all__ = ["DEFAULT_ROBOTS", "Resolver", "RoutingError", "Status", "Upstream", "make_resolver"]


def make_resolver(config: Any) -> Resolver:
    """The resolver named by `config.resolverType`, not started yet."""
    if config.resolverType == "Dummy":
        from resolvers.dummy import DummyResolver

        return DummyResolver(config.dummyTarget)
    from resolvers.etcd import EtcdResolver

    return EtcdResolver(config, env=config.resolverType == "Env")
