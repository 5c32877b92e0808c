"""The standalone process's listeners: gogeta's server on each port, drained together.

Standalone (`python gogeta.py`) no gunicorn arbiter stops the servers, so this does: one
`ProxyServer` (transport/server.py) for the plain port and one for `-tlsPort`. The first
SIGTERM or SIGINT closes every listener before any wait, then drains them all at once for
the drain timeout; a second signal cuts what is left (docs/behaviour.md §6). Like the rest
of the connection layer it sees the application as a WSGI callable and nothing more.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import ssl
from collections.abc import Sequence
from typing import Any

import gevent
import gevent.event

from transport.server import ProxyServer, ServerOptions

log = logging.getLogger("gogeta")  # the process's own lines, beside gogeta.py's


class CannotListen(OSError):
    """A port that cannot be listened on (taken, not allowed...); the message names it."""


class Listeners:
    """A server per `(port, tls)` whose port is not 0, all with `options` but their TLS."""

    def __init__(
        self,
        host: str,
        ports: Sequence[tuple[int, ssl.SSLContext | None]],
        app: Any,
        options: ServerOptions,
    ) -> None:
        self.host = host
        self.servers = [
            ProxyServer(
                (host, port),
                app,
                options=dataclasses.replace(options, tls=tls),
                log=None,  # pywsgi's own access lines: off, `proxy.front` writes gogeta's
                error_log=logging.getLogger("gogeta.server"),
            )
            for port, tls in ports
            if port
        ]
        self._stopped = gevent.event.Event()

    @property
    def port(self) -> int:
        """The first server's port (the plain one), as bound."""
        return int(self.servers[0].server_port)

    def drain_on_signals(self, timeout: float) -> None:
        """SIGTERM or SIGINT: drain for `timeout` seconds; again: stop without waiting."""

        def shutdown(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.servers[0].draining:
                log.warning("%s again: stopping without waiting", name)
                gevent.spawn(self._drain, 0.001)
                return
            log.info("%s: stopped accepting, draining for up to %ss", name, timeout)
            gevent.spawn(self._drain, timeout)

        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, shutdown, signum)

    def start(self) -> None:
        """Every port listening; CannotListen, naming the address, when one cannot."""
        for each in self.servers:
            try:
                each.start()
            except OSError as exc:
                port = each.address[1] if isinstance(each.address, tuple) else each.address
                raise CannotListen(f"cannot listen on {self.host}:{port}: {exc}") from exc

    def wait(self) -> None:
        """Until a signal's drain is over."""
        self._stopped.wait()

    def _drain(self, timeout: float) -> None:
        for each in self.servers:
            each.close()  # every port stops accepting before the wait
        drains = [gevent.spawn(each.drain, timeout) for each in self.servers]
        gevent.joinall(drains)
        left = sum(d.value or 0 for d in drains)
        if left:
            log.warning("drain timeout: %d connection(s) cut after %ss", left, timeout)
        self._stopped.set()
