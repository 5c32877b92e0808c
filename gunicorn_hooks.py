"""What gunicorn's workers need from gogeta: a worker class and the server hooks.

- gogeta's own server and handler (transport.server) in every gevent worker, so that a worker
  behaves as the standalone process does: the same request checks (smuggling,
  408/414/431), raw request target, fair turns between connections, one send per small
  answer, and idle connections closed at once when the worker stops. `ProxyWorker`, the
  worker class `gunicorn.conf.py` names, has them; gunicorn's own `-k gevent` gets them
  from `use_proxy_server` (it would parse requests itself).
- Only gevent workers can run gogeta: `worker_class_problem` says why another cannot.
- A stop signal sent while a worker boots is not lost (`post_fork`).
- Each worker starts its own resolver (its own etcd watch) after the fork, even with
  `--preload`, where the app object was made in the arbiter (`gogeta.DeferredApp`).
- With `-tlsPort` (GOGETA_TLS_PORT) gunicorn binds that port too, on the host of its first
  bind (`on_starting`); every worker then serves TLS on that listener with the same
  certificates, each from its own watch of etcd (transport.worker).
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
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from gunicorn.workers.ggevent import GeventWorker

# The worker class gunicorn.conf.py names (`gunicorn_hooks.ProxyWorker`), and the hook that
# gives gunicorn's own gevent worker gogeta's server: the connection layer's (transport).
from transport.worker import ProxyWorker, WorkerServer, use_proxy_server

__all__ = ["ProxyWorker", "WorkerServer", "use_proxy_server"]

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


@dataclass
class Loading:
    """gunicorn loading the app: its settings, and the worker unless in the arbiter."""

    cfg: Any
    worker: Any


def loading() -> Loading | None:
    """What gunicorn is loading the app for, when it is: None outside gunicorn.

    gunicorn calls the app factory with no handle on its settings or on the worker: they
    are the `self` of its frames up the stack (the application's `wsgi()`, the worker's
    `load_wsgi()`).
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.workers.base import Worker

    cfg = worker = None
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if worker is None and isinstance(owner, Worker):
            worker = owner
        if cfg is None and isinstance(owner, BaseApplication):
            cfg = owner.cfg
        frame = frame.f_back  # type: ignore[assignment]  # None past the outermost frame
    return None if cfg is None else Loading(cfg, worker)


def worker_class_problem(cfg: Any) -> str | None:
    """Why gogeta cannot run in gunicorn's configured worker class, if it cannot."""
    if issubclass(cfg.worker_class, GeventWorker):
        return None
    return (
        f"gunicorn's {cfg.worker_class_str!r} worker cannot run gogeta, which needs a gevent"
        " worker: start gunicorn with -c path/to/gunicorn.conf.py (gogeta's worker and"
        " hooks; gunicorn reads that file only from its working directory) or -k gevent"
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def post_fork(server: Any, worker: Any) -> None:
    """In a new worker, before gunicorn's worker sets its own signal handlers.

    Until its `init_signals` (after gevent's patching) a worker still has the arbiter's
    handler, which queues a signal on the worker's copy of the arbiter's queue, read by
    nobody: a stop sent then would be lost, and the worker killed at the graceful timeout.
    So stop signals are blocked (the kernel keeps them pending) until gunicorn's handlers
    are set, through the moment `init_signals` resets them to the default.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    # Already on the copied queue: arrived since the fork, or pending in the arbiter, which
    # then stops every worker, this one included, so sending it again changes nothing.
    held: list[int] = []
    queued = getattr(server, "SIG_QUEUE", None)
    while queued is not None and not queued.empty():
        signum = queued.get_nowait()
        if signum in STOP_SIGNALS:
            held.append(signum)
    init_signals: Callable[[], None] = worker.init_signals

    def init_signals_then_unblock() -> None:
        init_signals()
        for signum in held:
            os.kill(os.getpid(), signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    worker.init_signals = init_signals_then_unblock


def tls_bind(binds: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """gunicorn's binds with `-tlsPort` added, on the first bind's host, unless bound."""
    import settings

    setting = settings.BY_NAME["tlsPort"]
    try:
        port = setting.parse(environ.get(setting.env_name, setting.default))
    except ValueError:
        return binds  # the app refuses the setting when it loads, with its reason
    if not port or any(b.rpartition(":")[2] == str(port) for b in binds):
        return binds
    host = binds[0].rpartition(":")[0] if binds and ":" in binds[0] else "0.0.0.0"
    return [*binds, f"{host}:{port}"]


def on_starting(server: Any) -> None:
    # Before gunicorn opens its listeners: the TLS port is one more of them.
    binds = tls_bind(list(server.cfg.bind))
    if binds != list(server.cfg.bind):
        server.cfg.set("bind", binds)
    # Files left by a previous run would be summed into this one's counters (and its
    # workers' heartbeats shown by the live view).
    directory = metrics_dir()
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)
    for stale in glob.glob(os.path.join(directory, "gogeta-worker-*.json")):
        os.remove(stale)


def post_worker_init(worker: Any) -> None:
    """In the worker, after the fork and gevent's patching, before it serves: the worker's
    process is built and started (also with --preload, where create_app ran in the
    arbiter), and gogeta's server, with that process's options, serves its connections."""
    from gogeta import WorkerApp

    if isinstance(worker.wsgi, WorkerApp):
        use_proxy_server(worker, worker.wsgi.start().server_options)


def worker_exit(server: Any, worker: Any) -> None:
    from gogeta import WorkerApp

    # No `wsgi` when the app failed to load (a setting refused, say).
    wsgi = getattr(worker, "wsgi", None)
    if isinstance(wsgi, WorkerApp):
        wsgi.stop()


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter: a dead worker's live gauges (open connections) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
    try:  # its heartbeat for the live view (proxy/live.py)
        os.remove(os.path.join(metrics_dir(), f"gogeta-worker-{worker.pid}.json"))
    except OSError:
        pass


def on_exit(server: Any) -> None:
    for path in _made_dir:
        shutil.rmtree(path, ignore_errors=True)
