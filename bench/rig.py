"""What every part of `make bench` is given, and what it may answer instead of a result.

Rule: a part is a function `run(rig) -> <its result dataclass> | Skipped`; it starts what
it needs beyond the shared nginx backend and stops it before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.harness import Processes
from bench.options import BenchOptions
from bench.servers import Nginx, etcd_resolver_missing
from bench.tools import Tools


@dataclass(frozen=True)
class Rig:
    opts: BenchOptions
    procs: Processes
    tools: Tools
    backend: Nginx
    port_a: int  # the nginx backend: SMALL_BODY, and /big
    port_b: int  # the same nginx: OTHER_BODY, to see a location change


@dataclass(frozen=True)
class Skipped:
    """A part that could not run here, and why (written as `{"skipped": why}`)."""

    skipped: str


def etcd_skip() -> Skipped | None:
    """A Skipped for the parts that need gogeta's IoEtcd resolver, when it cannot start."""
    missing = etcd_resolver_missing()
    if missing:
        return Skipped(f"the IoEtcd resolver is not available yet ({missing})")
    return None
