"""Under gunicorn, a worker's figures copied to the shared files: metrics and heartbeat.

A scrape of /__gogeta/metrics, or the live view's JSON, reaches one worker: every worker
keeps its figures in the multiprocess files so that the answer shows them all, fresh: the
resolver's at once after each change of the routing table (the load included), and with
the process figures and the heartbeat (proxy/live.py) every `PUBLISH_SECONDS` for the rest
(lastAccess writes, etcd going away, memory...). Standalone there are no shared files and
nothing runs this. It sees the resolver through its protocol only; the composition root
(gogeta.Process) spawns it and kills it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from proxy.live import LiveView
    from proxy.metrics import Metrics
    from resolvers.base import Resolver

log = logging.getLogger("gogeta")  # the process's own lines, beside gogeta.py's

# How often a worker copies its resolver and process figures to the shared metrics files
# at the latest (a routing change copies them at once).
PUBLISH_SECONDS = 1.0


def publish_forever(metrics: Metrics, live: LiveView, resolver: Resolver) -> None:
    """Publish this worker's figures until killed: at each routing change, and every
    `PUBLISH_SECONDS` with the process figures and the heartbeat."""
    process_due = 0.0
    while True:
        started = time.monotonic()
        try:
            metrics.publish(process=started >= process_due)
        except Exception:
            log.exception("cannot publish the metrics")
        if started >= process_due:
            try:
                live.publish()  # this worker's heartbeat, for the live view
            except OSError as exc:
                log.warning("cannot write the live view's heartbeat: %s", exc)
            process_due = started + PUBLISH_SECONDS
        if not resolver.wait_for_change(PUBLISH_SECONDS):
            # Timed out, or a resolver whose table never changes returned at once.
            gevent.sleep(max(0.0, PUBLISH_SECONDS - (time.monotonic() - started)))
