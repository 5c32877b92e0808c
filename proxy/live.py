"""The operator's live view: `/__gogeta/` (an HTML page) and `/__gogeta/live` (its JSON).

The page is a shell (templates/live.html, its script and stylesheet in `__static__/`) that
fetches `/__gogeta/live` every 2 s. That JSON joins three things: this process (version,
uptime, the resolver's sync state), the last minute of traffic (`proxy.traffic`), and one
page of the routing table (`Resolver.describe` with a query and a page, so 100,000
domains never make a 100,000-row answer).

Under gunicorn each worker is a process of its own, with its own table, traffic and etcd
watch. Every second each worker writes a small heartbeat file (its process block and its
last minute's totals) into the multiprocess metrics directory; the answering worker reads
them all, so the process block and the totals cover every worker. The per-domain and
per-instance figures are the answering worker's only (the JSON says so in `scope`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from proxy.pages import TemplateError
from proxy.traffic import Tally, Traffic, quantile_ms
from resolvers.base import Resolver
from resolvers.model import upstream_of_url

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "gogeta-worker-"
HEARTBEAT_STALE = 5.0  # seconds: a worker silent this long is gone
REFRESH_MS = 2000  # how often the page fetches the JSON


def heartbeat_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{HEARTBEAT_PREFIX}{pid}.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LiveView:
    def __init__(
        self,
        resolver: Resolver,
        traffic: Traffic,
        template_dirs: list[Path],
        version: str,
        worker_dir: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.traffic = traffic
        self.version = version
        self.worker_dir = worker_dir  # gunicorn: the multiprocess metrics directory
        self.clock = clock
        self.started = clock()
        env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(d)) for d in template_dirs]),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        try:
            html = env.get_template("live.html").render(version=version, refresh_ms=REFRESH_MS)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"missing template {exc.name}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename}:{exc.lineno}: {exc.message}") from exc
        self.page = html.encode("utf-8")

    # ------------------------------------------------------------------ the process

    def process(self) -> dict[str, Any]:
        """This process: who it is and how it stands with etcd."""
        stats = self.resolver.stats()
        now = self.clock()
        return {
            "pid": os.getpid(),
            "version": self.version,
            "started": round(self.started, 3),
            "uptime_seconds": round(now - self.started, 1),
            "resolver": stats.get("resolver"),
            "source": stats.get("source"),
            "endpoint": stats.get("endpoint"),
            "loaded": bool(stats.get("loaded")),
            "etcd_index": stats.get("etcd_index"),
            "watch_lag_events": (stats.get("gauges") or {}).get("watch_lag_events"),
            "unreachable_since": stats.get("unreachable_since"),
            "last_error": stats.get("last_error"),
            "last_reload": stats.get("last_reload"),
        }

    def heartbeat(self) -> dict[str, Any]:
        return {**self.process(), "totals": self.traffic.totals(), "written": self.clock()}

    def publish(self) -> None:
        """Under gunicorn, write this worker's heartbeat file (atomically: a rename)."""
        if self.worker_dir is None:
            return
        data = json.dumps(self.heartbeat()).encode()
        fd, tmp = tempfile.mkstemp(prefix=".hb-", dir=self.worker_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, heartbeat_path(self.worker_dir, os.getpid()))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's heartbeat (this one's fresh), by pid; standalone just this."""
        own = self.heartbeat()
        if self.worker_dir is None:
            return [own]
        found = {own["pid"]: own}
        now = self.clock()
        for path in glob.glob(os.path.join(self.worker_dir, HEARTBEAT_PREFIX + "*.json")):
            try:
                with open(path, "rb") as f:
                    beat = json.loads(f.read())
                pid = int(beat["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not ours
            if pid in found or now - float(beat.get("written", 0)) > HEARTBEAT_STALE:
                continue
            if _alive(pid):
                found[pid] = beat
        return [found[pid] for pid in sorted(found)]

    @staticmethod
    def combined(workers: list[dict[str, Any]]) -> dict[str, Any]:
        """The workers' last minutes added up: rates summed, latencies merged."""
        if len(workers) == 1:
            return dict(workers[0]["totals"])
        latency: dict[int, int] = {}
        per_second = [0] * 60
        out: dict[str, Any] = {
            "window_seconds": 0.0,
            "requests": 0,
            "requests_per_second": 0.0,
            "4xx_per_second": 0.0,
            "5xx_per_second": 0.0,
            "open_connections": 0,
            "open_tunnels": 0,
            "4xx": 0,
            "5xx": 0,
        }
        for worker in workers:
            totals = worker["totals"]
            for key in out:
                if key != "window_seconds":
                    out[key] += totals.get(key, 0)
            out["window_seconds"] = max(out["window_seconds"], totals.get("window_seconds", 0))
            for bucket, count in totals.get("latency", {}).items():
                latency[int(bucket)] = latency.get(int(bucket), 0) + count
            for i, count in enumerate(totals.get("per_second", [])[:60]):
                per_second[i] += count
        for key in ("requests_per_second", "4xx_per_second", "5xx_per_second"):
            out[key] = round(out[key], 2)
        out["upstream_p50_ms"] = quantile_ms(latency, 0.5)
        out["upstream_p99_ms"] = quantile_ms(latency, 0.99)
        out["per_second"] = per_second
        out["latency"] = {str(k): v for k, v in latency.items()}
        return out

    # ------------------------------------------------------------------ the page's JSON

    def overview(self, query: str, page: int, per_page: int) -> dict[str, Any]:
        """`/__gogeta/live`: see README, "The live view"."""
        workers = self.workers()
        described = self.resolver.describe(query, page, per_page)
        services: dict[str, list[dict[str, Any]]] = described.get("services", {})
        hosts = list(described.get("domains", {}).items())
        upstreams: list[str] = []
        uri_labels: dict[str, str | None] = {}
        for host, domain in hosts:
            if domain["type"] == "service":
                for i in services.get(domain["value"], []):
                    upstreams.append(f"{domain['value']}/{i['index']}")
            else:
                uri_labels[host] = _label_of_url(domain["value"])
                if uri_labels[host] is not None:
                    upstreams.append(uri_labels[host])  # type: ignore[arg-type]
        traffic = self.traffic.of([h for h, _ in hosts], upstreams)

        def summary(kind: str, key: str | None) -> dict[str, Any]:
            tally = traffic[kind].get(key) if key is not None else None
            return (tally or Tally()).summary()

        domains = []
        for host, domain in hosts:
            entry: dict[str, Any] = {
                "host": host,
                "type": domain["type"],
                "value": domain["value"],
                "traffic": summary("domains", host),
            }
            if domain["type"] == "service":
                name = domain["value"]
                entry["service_exists"] = name in services
                entry["instances"] = [
                    {**i, "traffic": summary("upstreams", f"{name}/{i['index']}")}
                    for i in services.get(name, [])
                ]
            else:
                entry["upstream"] = uri_labels[host]
                entry["upstream_traffic"] = summary("upstreams", uri_labels[host])
            domains.append(entry)
        return {
            "generated": round(self.clock(), 3),
            "answered_by": os.getpid(),
            "mode": "standalone" if self.worker_dir is None else "gunicorn",
            "scope": "process" if self.worker_dir is None else "answering worker",
            "process": self.process(),
            "workers": [{k: v for k, v in w.items() if k != "totals"} | _brief(w) for w in workers],
            "totals": {k: v for k, v in self.combined(workers).items() if k != "latency"},
            "page": described.get("page"),
            "domains": domains,
        }


def _brief(worker: dict[str, Any]) -> dict[str, Any]:
    totals = worker.get("totals", {})
    return {
        "requests_per_second": totals.get("requests_per_second"),
        "5xx_per_second": totals.get("5xx_per_second"),
        "open_connections": totals.get("open_connections"),
        "open_tunnels": totals.get("open_tunnels"),
    }


def _label_of_url(url: str) -> str | None:
    try:
        return upstream_of_url(url).label
    except ValueError:
        return None
