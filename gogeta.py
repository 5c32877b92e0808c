"""gogeta: a dynamic reverse proxy routed by etcd.

Standalone: `python gogeta.py -etcdAddress http://127.0.0.1:2379 -port 7777`.
Under gunicorn: `gunicorn -w 2 'gogeta:create_app()'`, configured by `GOGETA_*`
(`gunicorn.conf.py` beside this file adds the worker hooks and the shared metrics).

gevent must patch the standard library before urllib3, ssl or etcd are imported.
Standalone, the first lines do it. gunicorn's gevent worker patches after the fork and
then loads the app; with `--preload` it loads it in the arbiter, which is never patched.
So this module imports the request path only inside functions, and `create_app` builds
the app (and starts its resolver) only in a patched process: in the arbiter it returns a
`DeferredApp` that each worker builds for itself after the fork. Nothing starts at import.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import settings  # noqa: E402

if TYPE_CHECKING:
    from proxy.front import Front

log = logging.getLogger("gogeta")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, access_log: str = "combined") -> None:
    """Application logs at `level` on stderr; access lines (`gogeta.access`) on stdout.

    The access log has its own switch (`-accessLog`), so it is INFO whatever `level` is,
    and its lines are bare, for log tools to parse.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)

    access = logging.getLogger("gogeta.access")
    access.propagate = False
    access.setLevel(logging.CRITICAL + 1 if access_log == "off" else logging.INFO)
    if not access.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)


def warn_unknown_variables() -> None:
    for message in settings.unknown_variable_warnings():
        log.warning("%s", message)


def check_templates(config: settings.Config) -> None:
    from proxy.pages import StatusPages, TemplateError

    try:
        StatusPages(config.templateDir)
    except TemplateError as exc:
        raise settings.SettingError(f"-templateDir: {exc}") from exc


def build_app(config: settings.Config) -> "Front":
    """The WSGI app for this config; its resolver is not started yet."""
    from proxy.access_log import formatter
    from proxy.admin import Admin
    from proxy.app import Gogeta
    from proxy.forward import Forwarder
    from proxy.front import Front
    from proxy.live import LiveView
    from proxy.metrics import Metrics
    from proxy.pages import StatusPages, TemplateError
    from proxy.static import StaticFiles
    from proxy.traffic import Traffic
    from resolvers import make_resolver

    try:
        pages = StatusPages(config.templateDir)
    except TemplateError as exc:
        raise settings.SettingError(f"-templateDir: {exc}") from exc
    resolver = make_resolver(config)
    forwarder = Forwarder(config.connectTimeout, config.readTimeout)
    forwarder.max_body = config.maxBodySize
    app = Gogeta(
        resolver=resolver,
        pages=pages,
        forwarder=forwarder,
        static=StaticFiles(config.templateDir),
        force_ssl=config.forceFwSsl,
        url_header=config.UrlHeaderParam,
        wake_hold=config.wakeHoldSeconds,
        trusted_proxies=config.trustedProxies,
        no_wake_agents=config.noWakeUserAgents,
    )
    metrics = Metrics(resolver.stats)
    traffic = Traffic()
    try:
        # An operator's copy of the templates may predate the live page: then gogeta's own.
        live = LiveView(
            resolver,
            traffic,
            [config.templateDir, settings.TEMPLATES],
            settings.version(),
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") if metrics.multiprocess else None,
        )
    except TemplateError as exc:
        raise settings.SettingError(f"-templateDir: {exc}") from exc

    def count_tunnel(delta: int) -> None:
        metrics.count_tunnel(delta)
        traffic.count_tunnel(delta)

    app.tunnels.on_count = count_tunnel
    admin = Admin(resolver, pages, metrics, config.trustedNetworks, config.healthGraceSeconds, live)
    front = Front(app, formatter(config.accessLog), admin, metrics, config.accessLogHealth, live)
    front.client_timeout = config.clientTimeout
    return front


class DeferredApp:
    """The app as `gunicorn --preload` loads it in the arbiter: built in each worker.

    The arbiter checks the settings and templates and forks; each worker builds the real
    app after its gevent patching, from `gunicorn.conf.py`'s `post_worker_init` hook or,
    without that file, at its first request.
    """

    def __init__(self, config: settings.Config) -> None:
        self.config = config
        self._app: Front | None = None

    def start(self) -> None:
        if self._app is None:
            self._app = build_app(self.config)
        self._app.start()

    def stop(self) -> None:
        if self._app is not None:
            self._app.stop()

    @property
    def client_timeout(self) -> float:
        timeout: float = self.config.clientTimeout
        return timeout

    def count_connection(self, delta: int) -> None:
        if self._app is not None:
            self._app.count_connection(delta)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self._app is None:
            self.start()
        assert self._app is not None
        return self._app(environ, start_response)


def create_app(*argv: str) -> "Front | DeferredApp":
    """The app factory gunicorn calls (`'gogeta:create_app()'`).

    Settings come from `GOGETA_*` variables (and from `argv`, flags as on the command
    line). In a gevent-patched process (a worker) the app is built and its resolver
    started here; in the arbiter (`--preload`) both wait for the fork. A worker class
    that is not gevent's is refused.
    """
    from gevent import monkey

    import gunicorn_hooks

    loading = gunicorn_hooks.loading()
    try:
        if loading is not None and (problem := gunicorn_hooks.worker_class_problem(loading.cfg)):
            raise settings.SettingError(problem)
        config = settings.parse(list(argv))
        configure_logging(config.logLevel, config.accessLog)
        warn_unknown_variables()
        if not monkey.is_module_patched("socket"):
            check_templates(config)
            return DeferredApp(config)
        app = build_app(config)
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        # gunicorn's code for "App failed to load": from a worker, it stops the arbiter
        # instead of having the worker forked again, and again.
        raise SystemExit(4 if loading else 2) from None
    if loading is not None:
        gunicorn_hooks.use_proxy_server(loading.worker)
    app.start()
    return app


def serve(config: settings.Config, app: "Front") -> None:
    """Run the standalone server until SIGTERM or SIGINT, then drain (docs/behaviour.md §6)."""
    import gevent
    import gevent.event

    from proxy.diagnostics import CpuProfiler, stacks
    from transport.server import ProxyServer

    server = ProxyServer(
        (config.listenAddress, config.port),
        app,
        log=None,  # pywsgi's own access lines: off, `proxy.front` writes gogeta's
        error_log=logging.getLogger("gogeta.server"),
    )
    server.count_connection = app.count_connection
    server.client_timeout = app.client_timeout
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
    app.start()
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
        app.stop()
        log.info("gogeta stopped")


def main(argv: Sequence[str]) -> int:
    config = settings.parse_or_exit(argv)
    configure_logging(config.logLevel, config.accessLog)
    warn_unknown_variables()
    try:
        app = build_app(config)
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        return 2
    serve(config, app)
    return 0


def cli() -> None:
    """The installed `gogeta` command: what `python gogeta.py` runs."""
    from gevent import monkey

    # This module's own imports load neither ssl, urllib3 nor etcd, so it is not too late.
    monkey.patch_all()
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
