"""gogeta's server in gunicorn's gevent workers.

`ProxyWorker` (the class gunicorn.conf.py names) and gunicorn's own `-k gevent` worker,
once `use_proxy_server` has run, serve with gogeta's pywsgi server and handler
(transport.server): the same request checks, client timeout, fair turns between
connections and drain as the standalone process, on the listeners and connection pool
gunicorn gives the worker.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker, GeventWorker

from transport.server import ProxyHandler, ProxyServer, ServerOptions


class WorkerServer(ProxyServer):
    """gogeta's server on the listener and connection pool gunicorn gives a worker.

    gunicorn binds `-tlsPort` beside the plain port (gunicorn_hooks.on_starting) and
    builds one server per listener: the one on that port serves TLS.
    """

    def __init__(self, listener: Any, application: Any = None, **kwargs: Any) -> None:
        kwargs["log"] = None  # proxy.front writes the access lines
        kwargs["error_log"] = logging.getLogger("gogeta.server")
        options: ServerOptions | None = kwargs.get("options")
        if options is not None and options.tls is not None:
            port = listener.getsockname()[1] if hasattr(listener, "getsockname") else None
            if port != options.tls_port:
                kwargs["options"] = dataclasses.replace(options, tls=None)
        super().__init__(listener, application, **kwargs)


class ProxyWorker(GeventPyWSGIWorker):  # type: ignore[misc]  # gunicorn is untyped
    server_class = WorkerServer
    wsgi_handler = ProxyHandler


def use_proxy_server(worker: Any, options: ServerOptions) -> None:
    """gogeta's server, with `options`, in a gevent worker before its `run` starts serving.

    gunicorn's GeventWorker (`-k gevent`) has no server class and serves with its own HTTP
    parser; given one, it runs it on its listeners and connection pool instead. gunicorn
    builds the server itself, so the options are bound to the class it is given.
    """
    if isinstance(worker, GeventWorker):
        worker.server_class = functools.partial(WorkerServer, options=options)
        worker.wsgi_handler = ProxyHandler
