"""gogeta: a dynamic reverse proxy routed by etcd.

Standalone: `python gogeta.py -etcdAddress http://127.0.0.1:2379 -port 7777`.
Under gunicorn: `gunicorn -k gevent 'gogeta:create_app()'`, configured by `GOGETA_*`.

Standalone, gevent must patch the standard library before urllib3, ssl or etcd are
imported, hence the first lines. gunicorn's gevent worker patches after fork and only then
imports this module, so nothing here starts a greenlet at import time: `create_app` does.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

import settings  # noqa: E402
from proxy.app import Gogeta  # noqa: E402
from proxy.diagnostics import CpuProfiler, stacks  # noqa: E402
from proxy.forward import Forwarder  # noqa: E402
from proxy.pages import StatusPages, TemplateError  # noqa: E402
from proxy.server import ProxyServer  # noqa: E402
from proxy.static import StaticFiles  # noqa: E402
from resolvers import make_resolver  # noqa: E402

log = logging.getLogger("gogeta")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(level)


def build_app(config: settings.Config) -> Gogeta:
    """The WSGI app for this config; its resolver is not started yet."""
    try:
        pages = StatusPages(config.templateDir)
    except TemplateError as exc:
        raise settings.SettingError(f"-templateDir: {exc}") from exc
    return Gogeta(
        resolver=make_resolver(config),
        pages=pages,
        forwarder=Forwarder(config.connectTimeout, config.readTimeout),
        static=StaticFiles(config.templateDir),
        force_ssl=config.forceFwSsl,
        url_header=config.UrlHeaderParam,
    )


def create_app(*argv: str) -> Gogeta:
    """The app factory gunicorn calls in each worker, after its gevent patching.

    Settings come from `GOGETA_*` variables (and from `argv`, flags as on the command
    line). The resolver's background work starts here, never at import.
    """
    try:
        config = settings.parse(list(argv))
        configure_logging(config.logLevel)
        app = build_app(config)
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app.resolver.start()
    return app


def serve(config: settings.Config, app: Gogeta) -> None:
    """Run the standalone server until SIGTERM or SIGINT, then drain (SPEC §6)."""
    server = ProxyServer(
        (config.listenAddress, config.port),
        app,
        log=None,  # pywsgi's own access lines: off, gogeta writes its own
        error_log=logging.getLogger("gogeta.server"),
    )
    stopped = gevent.event.Event()
    profiler = CpuProfiler(config.cpuProfile)

    def drain(timeout: float) -> None:
        left = server.drain(timeout)
        if left:
            log.warning("drain timeout: %d connection(s) cut after %ss", left, timeout)
        stopped.set()

    def shutdown(signum: int) -> None:
        name = signal.Signals(signum).name
        if server.draining:
            log.warning("%s again: stopping without waiting", name)
            gevent.spawn(drain, 0.001)
            return
        log.info("%s: stopped accepting, draining for up to %ss", name, config.drainTimeout)
        gevent.spawn(drain, config.drainTimeout)

    def dump_stacks() -> None:
        log.warning("SIGUSR1: stacks of every thread and greenlet\n%s", stacks())

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, shutdown, signum)
    gevent.signal_handler(signal.SIGUSR1, dump_stacks)
    gevent.signal_handler(signal.SIGUSR2, profiler.toggle)

    try:
        server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.listenAddress, config.port, exc)
        raise SystemExit(1) from None
    app.resolver.start()
    log.info(
        "gogeta listening on http://%s:%s/ (resolver %s)",
        config.listenAddress,
        server.server_port,
        config.resolverType,
    )
    try:
        stopped.wait()
    finally:
        profiler.stop()
        app.resolver.stop()
        app.forwarder.close()
        log.info("gogeta stopped")


def main(argv: Sequence[str]) -> int:
    config = settings.parse_or_exit(argv)
    configure_logging(config.logLevel)
    try:
        app = build_app(config)
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        return 2
    serve(config, app)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
