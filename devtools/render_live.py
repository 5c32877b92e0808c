"""`make pages`, the live view: `/__gogeta/` of a real gogeta over a sample table, as PNG.

A local etcd (from the virtualenv) gets a table with every case the view shows: started
instances, one starting, one asleep, one stopped, one not alive, an invalid location, a
refused one (ejected once traffic reaches it), a URL domain, a domain whose service does
not exist, and fillers. Two small backends answer, some traffic flows, then Playwright
drives the system's Chromium for full-page screenshots at each size.
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from devtools.children import ROOT, spawn, terminate, wait_for
from devtools.example_app import start_backend
from devtools.local_etcd import start_etcd
from devtools.machine import chromium_binary, free_port

Key = tuple[str, str]


def location(port: int) -> str:
    return json.dumps({"host": "127.0.0.1", "port": port})


def sample(a: int, b: int, refused: int) -> list[Key]:
    keys: list[Key] = []

    def domain(host: str, kind: str, value: str) -> None:
        keys.extend([(f"/domains/{host}/type", kind), (f"/domains/{host}/value", value)])

    def status(path: str, current: str, expected: str, alive: str | None = "1") -> None:
        keys.extend([(f"{path}/status/current", current), (f"{path}/status/expected", expected)])
        if alive:
            keys.append((f"{path}/status/alive", alive))

    domain("shop.example.com", "service", "shop")
    keys += [("/services/shop/1/location", location(a)), ("/services/shop/2/location", location(b))]
    keys.append(("/services/shop/3/location", location(refused)))
    domain("blog.example.com", "service", "blog")
    keys.append(("/services/blog/1/location", location(a)))
    status("/services/blog/1", "starting", "started")
    keys.append(("/services/blog/2/location", location(b)))
    status("/services/blog/2", "stopped", "passivated")
    domain("legacy.example.com", "service", "legacy")
    keys.append(("/services/legacy/1/location", location(a)))
    status("/services/legacy/1", "stopped", "stopped")
    keys.append(("/services/legacy/2/location", location(b)))
    status("/services/legacy/2", "started", "started", alive=None)
    domain("broken.example.com", "service", "broken")
    keys.append(("/services/broken/1/location", '{"host": "10.0.0.7", "port": "http"}'))
    domain("api.example.com", "uri", f"http://127.0.0.1:{a}/v1")
    domain("ghost.example.com", "service", "ghost")
    for i in range(1, 19):
        domain(f"customer-{i:03}.example.com", "service", "shop")
    return keys


def put(port: int, keys: Sequence[Key]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        for key, value in keys:
            conn.request("PUT", "/v2/keys" + key, urlencode({"value": value}), headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status not in (200, 201):
                raise SystemExit(f"pages: etcd refused {key}: {resp.status}")
    finally:
        conn.close()


def get(port: int, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "pages"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@contextmanager
def sample_gogeta(out: Path, template_dir: Path) -> Iterator[int]:
    """A gogeta routing the sample table, with a few seconds of traffic behind it: its port."""
    with tempfile.TemporaryDirectory(prefix="gogeta-pages-") as tmp:
        run_dir = Path(tmp)
        etcd_port = free_port()
        etcd = start_etcd("127.0.0.1", etcd_port, run_dir / "etcd", run_dir)
        backends = [start_backend(name, free_port()) for name in ("1", "2")]
        gogeta: Any = None
        try:
            a, b = (int(s.server_address[1]) for s in backends)
            put(etcd_port, sample(a, b, free_port()))
            port = free_port()
            argv = [sys.executable, str(ROOT / "gogeta.py"), "-listenAddress", "127.0.0.1"]
            argv += ["-port", str(port), "-etcdAddress", f"http://127.0.0.1:{etcd_port}"]
            argv += ["-templateDir", str(template_dir), "-ejectSeconds", "600"]
            argv += ["-accessLog", "off"]
            gogeta = spawn(argv, out / "gogeta-live.log")

            def routed() -> bool:
                try:
                    return get(port, "shop.example.com") == 200
                except OSError:
                    return False  # not listening yet

            wait_for(routed, 20, "gogeta to route")
            deadline = time.monotonic() + 3  # a few seconds of traffic for the figures
            while time.monotonic() < deadline:
                for host in ("shop.example.com", "api.example.com", "customer-007.example.com"):
                    get(port, host)
                get(port, "ghost.example.com")  # 404: its service does not exist
            yield port
        finally:
            if gogeta is not None:
                terminate(gogeta, "gogeta")
            for server in backends:
                server.shutdown()
            terminate(etcd, "etcd")


def render_live(
    out: Path, template_dir: Path, sizes: dict[str, tuple[int, int]], schemes: list[bool]
) -> list[Path]:
    """`view-SIZE[-dark].png`, whole pages, in `out`."""
    from playwright.sync_api import sync_playwright

    browser_path = chromium_binary()
    if browser_path is None:
        raise SystemExit("pages: no Chromium for the live view")
    made: list[Path] = []
    with sample_gogeta(out, template_dir) as port, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        for size_name, (width, height) in sizes.items():
            for dark in schemes:
                context = browser.new_context(
                    viewport={"width": width, "height": height},
                    color_scheme="dark" if dark else "light",
                )
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/__gogeta/")
                page.wait_for_selector("#updated:has-text('Updated')")
                png = out / f"view-{size_name}{'-dark' if dark else ''}.png"
                page.screenshot(path=str(png), full_page=True)
                made.append(png)
                context.close()
        browser.close()
    return made
