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
    from issuance.orders import Orders
    from resolvers.base import Resolver
    from resolvers.certs import CertTree, ChallengeTree
    from resolvers.source import Source
    from transport.tls import Certificates

log = logging.getLogger("gogeta")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Application logs at `level` on stderr. Access lines do not go through `logging`:
    `proxy.access_log.AccessWriter` writes them, bare, on stdout, whatever `level` is."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def warn_unknown_variables() -> None:
    for message in settings.unknown_variable_warnings():
        log.warning("%s", message)


def check_templates(config: settings.Config) -> None:
    from proxy.pages import StatusPages, TemplateError

    try:
        StatusPages(config.templateDir)
    except TemplateError as exc:
        raise settings.SettingError(f"-templateDir: {exc}") from exc


class Process:
    """One serving process, wired from its config: the composition root.

    Every component gets what it needs through its constructor here, and nowhere else,
    for the standalone process and for each gunicorn worker alike. `app` is the WSGI app,
    `server_options` what the server needs beside it; `start` and `stop` run what works
    in the background (the resolver's etcd watch, the metrics and heartbeat publisher),
    once.
    """

    def __init__(self, config: settings.Config) -> None:
        from issuance.answers import validation_answers
        from proxy.access_log import writer
        from proxy.admin import Admin
        from proxy.app import Gogeta
        from proxy.forward import Forwarder
        from proxy.front import Front
        from proxy.live import LiveView
        from proxy.loop_lag import LoopLag
        from proxy.metrics import Metrics
        from proxy.pages import StatusPages, TemplateError
        from proxy.static import StaticFiles
        from proxy.traffic import Traffic
        from proxy.tunnel import Tunnels
        from resolvers import make_resolver, make_source
        from transport.server import ServerOptions

        try:
            pages = StatusPages(config.templateDir)
        except TemplateError as exc:
            raise settings.SettingError(f"-templateDir: {exc}") from exc
        source = make_source(config)
        self.certificates, tree = self._certificates(config, source)
        certificates = self.certificates
        self.resolver = resolver = make_resolver(config, source)
        self.orders, challenges = self._orders(config, source, resolver, certificates, tree)
        self.metrics = metrics = Metrics(
            resolver.stats, certificates.figures if certificates else None
        )
        self.loop_lag = LoopLag(metrics.registry)
        self.forwarder = forwarder = Forwarder(
            config.connectTimeout, config.readTimeout, max_body=config.maxBodySize
        )
        traffic = Traffic()  # the last minute, for the live view
        try:
            # An operator's copy of the templates may predate the live page: then gogeta's own.
            self.live = live = LiveView(
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

        def count_connection(delta: int) -> None:
            metrics.count_connection(delta)
            traffic.count_connection(delta)

        tunnels = Tunnels(
            config.connectTimeout,
            config.readTimeout,
            config.UrlHeaderParam,
            on_count=count_tunnel,
        )
        # With -acmeDirectory: the answers to HTTP-01 validation requests (docs/behaviour.md §10).
        acme_answer = None
        if source is not None and challenges is not None:
            acme_answer = validation_answers(source, challenges)
        app = Gogeta(
            resolver=resolver,
            pages=pages,
            forwarder=forwarder,
            tunnels=tunnels,
            static=StaticFiles(config.templateDir),
            force_ssl=config.forceFwSsl,
            url_header=config.UrlHeaderParam,
            wake_hold=config.wakeHoldSeconds,
            trusted_proxies=config.trustedProxies,
            no_wake_agents=config.noWakeUserAgents,
            tls_port=config.tlsPort,
            hsts_max_age=config.hstsMaxAge,
            acme_answer=acme_answer,
        )
        admin = Admin(
            resolver,
            pages,
            metrics,
            config.trustedNetworks,
            config.healthGraceSeconds,
            self._describe_tls if certificates else None,
            live,
        )
        self.app: Front = Front(
            app, writer(config.accessLog), admin, metrics, config.accessLogHealth, live
        )
        # With TLS: the context to serve it with, on -tlsPort (transport.worker under gunicorn).
        self.server_options = ServerOptions(
            config.clientTimeout,
            count_connection,
            tls=certificates.context if certificates else None,
            tls_port=config.tlsPort,
        )
        self._started = False
        self._publisher: Any = None
        self._lag: Any = None

    @staticmethod
    def _certificates(
        config: settings.Config, source: "Source | None"
    ) -> "tuple[Certificates | None, CertTree | None]":
        """With -tlsPort: the default certificate, and `certDir` mirrored from etcd into
        TLS contexts through the same source, whichever etcd API it speaks."""
        if not config.tlsPort:
            return None, None
        from resolvers.certs import CertTree
        from transport.tls import CertificateProblem, Certificates

        try:
            certificates = Certificates(config.tlsCertFile, config.tlsKeyFile)
        except CertificateProblem as exc:
            raise settings.SettingError(f"-tlsCertFile/-tlsKeyFile: {exc}") from None
        if source is None:
            return certificates, None
        tree = CertTree(config.certDir)
        source.mirror(tree, lambda kind, detail: certificates.update(tree.take_changes()))
        return certificates, tree

    @staticmethod
    def _orders(
        config: settings.Config,
        source: "Source | None",
        resolver: "Resolver",
        certificates: "Certificates | None",
        tree: "CertTree | None",
    ) -> "tuple[Orders | None, ChallengeTree | None]":
        """With -acmeDirectory: certificates ordered on demand for the routed domains, the
        challenge answers mirrored from etcd for the plain port to serve."""
        if not config.acmeDirectory or source is None or certificates is None or tree is None:
            return None, None
        from issuance.orders import Orders
        from resolvers.certs import ChallengeTree

        challenges = ChallengeTree(f"{config.certDir}/.acme/challenges")
        source.mirror(challenges, lambda kind, detail: None)
        orders = Orders(
            source,
            config.certDir,
            config.acmeDirectory,
            config.acmeEmail,
            config.acmeCaFile,
            routed=resolver.routed,
            stored=lambda: tree.pairs,
            challenges=challenges,
            stopped_waiting=certificates.stop_waiting,
        )
        certificates.on_demand = orders.want
        certificates.hold = config.acmeHoldSeconds
        return orders, challenges

    def _describe_tls(self) -> dict[str, Any]:
        assert self.certificates is not None
        described = self.certificates.describe()
        if self.orders is not None:
            described["acme"] = self.orders.describe()
        return described

    def start(self) -> "Process":
        if not self._started:
            import gevent

            self._started = True
            self._lag = gevent.spawn(self.loop_lag.run)
            self.resolver.start()
            if self.orders is not None:
                self.orders.start()
            if self.metrics.multiprocess:  # under gunicorn: figures for every worker
                from proxy.publisher import publish_forever

                self._publisher = gevent.spawn(
                    publish_forever, self.metrics, self.live, self.resolver
                )
        return self

    def stop(self) -> None:
        if self._lag is not None:
            self._lag.kill()
        if self._publisher is not None:
            self._publisher.kill()
        if self.orders is not None:
            self.orders.stop()
        self.resolver.stop()
        self.forwarder.close()


class WorkerApp:
    """What gunicorn gets from `create_app`: the WSGI app of the worker's own Process.

    With `--preload` the factory runs in the arbiter, which is never gevent-patched: the
    settings and templates are checked there and each worker builds its Process after the
    fork, from `gunicorn.conf.py`'s `post_worker_init` hook or, without that file, at its
    first request. Without `--preload` the worker builds it in the factory.
    """

    def __init__(self, config: settings.Config) -> None:
        self.config = config
        self.process: Process | None = None
        self._pid = 0

    def start(self) -> "Process":
        """This worker's Process, built and started once (in this pid: not the arbiter's)."""
        if self.process is None or self._pid != os.getpid():
            self.process, self._pid = Process(self.config), os.getpid()
        return self.process.start()

    def stop(self) -> None:
        if self.process is not None and self._pid == os.getpid():
            self.process.stop()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        process = self.process
        if process is None or self._pid != os.getpid():
            process = self.start()
        return process.app(environ, start_response)


def create_app(*argv: str) -> WorkerApp:
    """The app factory gunicorn calls (`'gogeta:create_app()'`).

    Settings come from `GOGETA_*` variables (and from `argv`, flags as on the command
    line). In a gevent-patched process (a worker) the worker's Process is built and
    started here; in the arbiter (`--preload`) it waits for the fork. A worker class that
    is not gevent's is refused.
    """
    from gevent import monkey

    import gunicorn_hooks

    loading = gunicorn_hooks.loading()
    try:
        if loading is not None and (problem := gunicorn_hooks.worker_class_problem(loading.cfg)):
            raise settings.SettingError(problem)
        config = settings.parse(list(argv))
        configure_logging(config.logLevel)
        warn_unknown_variables()
        app = WorkerApp(config)
        if not monkey.is_module_patched("socket"):
            check_templates(config)
            return app
        process = app.start()
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        # gunicorn's code for "App failed to load": from a worker, it stops the arbiter
        # instead of having the worker forked again, and again.
        raise SystemExit(4 if loading else 2) from None
    if loading is not None:
        gunicorn_hooks.use_proxy_server(loading.worker, process.server_options)
    return app


def serve(config: settings.Config, process: Process) -> None:
    """Run the standalone server until SIGTERM or SIGINT, then drain (docs/behaviour.md §6)."""
    import gevent

    from proxy.diagnostics import CpuProfiler, stacks
    from transport.standalone import CannotListen, Listeners

    options = process.server_options
    listeners = Listeners(
        config.listenAddress,
        ((config.port, None), (config.tlsPort, options.tls)),
        process.app,
        options,
    )
    profiler = CpuProfiler(config.cpuProfile)

    def dump_stacks() -> None:
        log.warning("SIGUSR1: stacks of every thread and greenlet\n%s", stacks())

    listeners.drain_on_signals(config.drainTimeout)
    gevent.signal_handler(signal.SIGUSR1, dump_stacks)
    gevent.signal_handler(signal.SIGUSR2, profiler.toggle)

    try:
        listeners.start()
    except CannotListen as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    process.start()
    log.info(
        "gogeta listening on http://%s:%s/ (resolver %s)",
        config.listenAddress,
        listeners.port,
        config.resolverType,
    )
    if len(listeners.servers) > 1:
        log.info("gogeta listening on https://%s:%s/", config.listenAddress, config.tlsPort)
    try:
        listeners.wait()
    finally:
        profiler.stop()
        process.stop()
        log.info("gogeta stopped")


def main(argv: Sequence[str]) -> int:
    config = settings.parse_or_exit(argv)
    configure_logging(config.logLevel)
    warn_unknown_variables()
    try:
        process = Process(config)
    except settings.SettingError as exc:
        print(f"gogeta: {exc}", file=sys.stderr)
        return 2
    serve(config, process)
    return 0


def cli() -> None:
    """The installed `gogeta` command: what `python gogeta.py` runs."""
    from gevent import monkey

    # This module's own imports load neither ssl, urllib3 nor etcd, so it is not too late.
    monkey.patch_all()
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
