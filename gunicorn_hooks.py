"""What gunicorn's workers need from gogeta: a worker class and the server hooks.

- `ProxyWorker`, the worker class `gunicorn.conf.py` names: gunicorn's gevent worker on
  gevent.pywsgi (gunicorn's `gevent_pywsgi`), serving with gogeta's own server and handler
  (proxy.server), so that a worker behaves as the standalone process does: the same
  request checks (smuggling, 408/414/431), raw request target, fair turns between
  connections, one send per small answer, and idle connections closed at once when the
  worker stops. With `-k gevent` instead, gunicorn parses requests itself: it works, with
  gunicorn's checks and keep-alive handling, and about a fifth more CPU per request.

- Each worker starts its own resolver (its own etcd watch) after the fork, even with
  `--preload`, where the app object was made in the arbiter (`gogeta.DeferredApp`).
- Accepted sockets get TCP_NODELAY. gunicorn already sets it on its TCP listeners and
  Linux copies it to accepted sockets; setting it per connection keeps that true whatever
  the listener (see proxy/server.py for why it matters).
- Metrics cover all workers: prometheus-client's multiprocess mode, one directory of
  per-process files named by `PROMETHEUS_MULTIPROC_DIR`. The variable must be set before
  any process imports prometheus_client, so `gunicorn.conf.py` calls `metrics_dir` when
  gunicorn loads it, in the arbiter, before the app and the workers exist.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, MutableMapping
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker

from proxy.server import ProxyHandler, ProxyServer, set_nodelay

log = logging.getLogger("gogeta")

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_made_dir: list[str] = []  # the directory metrics_dir created, removed on exit


def metrics_dir(environ: MutableMapping[str, str] = os.environ) -> str:
    """The multiprocess metrics directory, made (and exported) unless already set."""
    path = environ.get(METRICS_DIR)
    if not path:
        path = tempfile.mkdtemp(prefix="gogeta-metrics-")
        environ[METRICS_DIR] = path
        _made_dir.append(path)
    os.makedirs(path, exist_ok=True)
    return path


class WorkerServer(ProxyServer):
    """gogeta's server on the listener and connection pool gunicorn gives a worker."""

    def __init__(self, listener: Any, application: Any = None, **kwargs: Any) -> None:
        kwargs["log"] = None  # proxy.front writes the access lines
        kwargs["error_log"] = logging.getLogger("gogeta.server")
        super().__init__(listener, application, **kwargs)
        self.client_timeout = getattr(application, "client_timeout", 0.0)
        self.count_connection = getattr(application, "count_connection", self.count_connection)


class ProxyWorker(GeventPyWSGIWorker):  # type: ignore[misc]  # gunicorn is untyped
    server_class = WorkerServer
    wsgi_handler = ProxyHandler


def on_starting(server: Any) -> None:
    # Files left by a previous run would be summed into this one's counters.
    for stale in glob.glob(os.path.join(metrics_dir(), "*.db")):
        os.remove(stale)


def post_worker_init(worker: Any) -> None:
    """In the worker, after the fork and gevent's patching, before it serves."""
    app = worker.wsgi
    start: Callable[[], None] | None = getattr(app, "start", None)
    if start is not None:
        start()
    handle = worker.handle

    def handle_connection(listener: Any, client: Any, addr: Any) -> None:
        set_nodelay(client)
        count = getattr(app, "count_connection", None)
        if count is None:
            handle(listener, client, addr)
            return
        count(1)
        try:
            handle(listener, client, addr)
        finally:
            count(-1)

    # The gevent worker looks `handle` up on the instance when it starts its servers.
    worker.handle = handle_connection


def worker_exit(server: Any, worker: Any) -> None:
    stop: Callable[[], None] | None = getattr(worker.wsgi, "stop", None)
    if stop is not None:
        stop()


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter: a dead worker's live gauges (open connections) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    for path in _made_dir:
        shutil.rmtree(path, ignore_errors=True)
