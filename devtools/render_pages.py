"""`make pages`: every status page as a PNG, at phone and desktop widths, into `pages/`.

The pages are rendered by `proxy.pages.StatusPages` from `templateDir` and served, with
`__static__/`, by a small local HTTP server, so the browser loads the stylesheet by the same
absolute path it uses behind gogeta. Two of them are also taken through a real gogeta
process (Dummy resolver): `bad_gateway` from a backend that refuses, and `notfound` from a
missing static asset. Headless Chromium takes the screenshots. The live view (`/__gogeta/`)
is rendered by devtools/render_live.py, over a sample table in a local etcd, as
`view-phone.png` and `view-desktop.png`. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.machine import CHROMIUM_MISSING, chromium_binary, free_port  # noqa: E402
from proxy.pages import PAGES, StatusPages  # noqa: E402

# The HTTP code each page is shown with (docs/behaviour.md §3.2 and §2.8).
CODES = {
    "notfound": 404,
    "starting": 503,
    "passivated": 503,
    "stopped": 500,
    "error": 500,
    "bad_request": 400,
    "bad_gateway": 502,
    "gateway_timeout": 504,
    "internal_error": 500,
}
SIZES = {"phone": (390, 844), "desktop": (1366, 768)}
HOSTNAME = "shop.example.com"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def log(message: str) -> None:
    print(f"pages: {message}", flush=True)


def chromium() -> str:
    found = chromium_binary()
    if found is None:
        raise SystemExit(f"pages: {CHROMIUM_MISSING}")
    return found


def serve_pages(template_dir: Path) -> http.server.ThreadingHTTPServer:
    """`/NAME` → that page rendered; `/__static__/...` → the template directory's assets."""
    pages = StatusPages(template_dir)
    static = template_dir / "__static__"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.strip("/").partition("?")[0]
            if name in CODES:
                page = pages.render(name, CODES[name], HOSTNAME)
                self.send_response(int(page.status.split()[0]))
                for key, value in page.headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(page.body)
                return
            asset = static / name.removeprefix("__static__/")
            if name.startswith("__static__/") and asset.is_file() and ".." not in name:
                data = asset.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/css; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_error(404)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_gogeta(template_dir: Path, out_dir: Path) -> tuple[Any, int]:
    """gogeta with the Dummy resolver aimed at a port where nothing listens."""
    port = free_port()
    log_file = open(out_dir / "gogeta.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "gogeta.py"),
            "-listenAddress",
            "127.0.0.1",
            "-port",
            str(port),
            "-resolverType",
            "Dummy",
            "-dummyTarget",
            f"http://127.0.0.1:{free_port()}/",
            "-templateDir",
            str(template_dir),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    log_file.close()
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"pages: gogeta exited {proc.returncode}, see {out_dir}/gogeta.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("pages: gogeta did not listen within 20 s") from None
            time.sleep(0.05)


def screenshot(browser: str, url: str, png: Path, size: tuple[int, int], dark: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="gogeta-chromium-") as profile:
        flags = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={size[0]},{size[1]}",
        ]
        if dark:
            flags.append("--force-dark-mode")
        result = subprocess.run(
            [browser, *flags, url], capture_output=True, timeout=60, check=False
        )
    if not png.exists():
        raise SystemExit(
            f"pages: Chromium made no {png.name}:\n{result.stderr.decode(errors='replace')}"
        )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="Render gogeta's status pages to PNG.")
    parser.add_argument("--out", type=Path, default=ROOT / "pages", help="default pages/")
    parser.add_argument("--template-dir", type=Path, default=ROOT / "templates")
    parser.add_argument("--dark", action="store_true", help="also render in dark mode")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated page names, `view` for the live view (default all)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    template_dir: Path = args.template_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    assert set(CODES) == set(PAGES), "every page needs a code here"

    server = serve_pages(template_dir)
    gogeta, gogeta_port = start_gogeta(template_dir, out)
    shots: list[tuple[str, str]] = [
        (name, f"http://127.0.0.1:{server.server_address[1]}/{name}") for name in PAGES
    ]
    # Through gogeta itself: a refused backend, and a static asset that does not exist.
    shots.append(("live-bad_gateway", f"http://127.0.0.1:{gogeta_port}/"))
    shots.append(("live-notfound", f"http://127.0.0.1:{gogeta_port}/__static__/missing.css"))
    with_view = not args.only or "view" in args.only.split(",")
    if args.only:
        wanted = set(args.only.split(","))
        shots = [shot for shot in shots if shot[0] in wanted]
    schemes = [False, True] if args.dark else [False]
    try:
        for name, url in shots:
            for size_name, size in SIZES.items():
                for dark in schemes:
                    png = out / f"{name}-{size_name}{'-dark' if dark else ''}.png"
                    screenshot(browser, url, png, size, dark)
            log(f"{name}: done")
    finally:
        gogeta.send_signal(signal.SIGTERM)
        gogeta.wait(timeout=15)
        server.shutdown()
    if with_view:
        from devtools.render_live import render_live

        render_live(out, template_dir, SIZES, schemes)
        log("live: done")
    log(f"{len(list(out.glob('*.png')))} screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
