"""The live view in a real browser: Playwright driving the system's Chromium (no browser
download) against a real gogeta and etcd. The page must follow etcd without a reload, find
one domain among 10,000, show an ejected instance with its reason, log no console error,
read on a phone in dark mode, and stay hidden from untrusted clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from devtools.machine import CHROMIUM_MISSING, chromium_binary
from tests.support import Backend, EtcdServer, GogetaProcess, Start, free_port, wait_until
from tests.test_live import domain_keys, location, put_many

FOLLOW_MS = 3000  # a change in etcd shows on the page within this long (it polls every 2 s)


LivePage = tuple[Page, "Console"]  # the `page` fixture: a page and its console


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_binary()
    if executable is None:
        pytest.skip(CHROMIUM_MISSING)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """Errors the page logged or threw."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    console = Console(opened)
    yield opened, console
    context.close()
    assert console.errors == []


def open_live(page: Page, proxy: GogetaProcess, query: str = "") -> None:
    page.goto(f"http://127.0.0.1:{proxy.port}/__gogeta/{query}")
    page.wait_for_selector("#updated:has-text('Updated')")


def group(page: Page, host: str) -> Any:
    """The rows of one domain (its <tbody>)."""
    return page.locator("#routes tbody").filter(has=page.locator(f"th .host:text-is('{host}')"))


def test_the_page_follows_etcd_without_a_reload(
    gogeta: Start, etcd: EtcdServer, page: tuple[Page, Console]
) -> None:
    view, _ = page
    with Backend() as backend:
        put_many(etcd, [
            *domain_keys("shop.example.com", "shop"),
            ("/services/shop/1/location", location(backend.port)),
            ("/services/shop/2/location", location(backend.port)),
            ("/services/shop/2/status/current", "starting"),
            ("/services/shop/2/status/expected", "started"),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        open_live(view, proxy)
        shop = group(view, "shop.example.com")
        assert shop.locator("tr").count() == 2
        assert shop.locator("th .target").inner_text() == "→ service shop"
        rows = shop.locator("tr")
        assert rows.nth(0).locator(".badge").first.inner_text() == "started"
        assert rows.nth(0).locator("td[data-label=Location]").inner_text() == (
            f"127.0.0.1:{backend.port}"
        )
        assert rows.nth(1).locator(".badge").first.inner_text() == "starting"
        assert "starting" in rows.nth(1).locator("td[data-label='Why not routable']").inner_text()
        view.evaluate("window.notReloaded = true")

        client = etcd.client()
        client.write("/services/shop/2/status/current", "started")
        client.write("/services/shop/2/status/alive", "1")
        view.wait_for_function(
            """() => {
              const rows = [...document.querySelectorAll('#routes tbody tr')];
              return rows.length === 2 && rows[1].querySelector('.badge').textContent === 'started';
            }""",
            timeout=FOLLOW_MS,
        )
        put_many(etcd, domain_keys("blog.example.com", "shop"))
        group(view, "blog.example.com").wait_for(timeout=FOLLOW_MS)
        assert view.evaluate("window.notReloaded") is True
        # The traffic sent above shows in the last minute.
        assert int(view.locator("#totals .tile dd").first.inner_text().split(".")[0]) >= 0
        assert "1" in view.locator("#process").inner_text()


def test_search_finds_one_domain_among_10000(
    gogeta: Start, etcd: EtcdServer, page: tuple[Page, Console]
) -> None:
    view, _ = page
    with Backend() as backend:
        hosts = [f"d{i:05}.example.com" for i in range(10_000)]
        put_many(etcd, [
            *(k for h in hosts for k in domain_keys(h, "web")),
            ("/services/web/1/location", location(backend.port)),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url)
        wait_until(lambda: proxy.get("/", host="d09999.example.com").status == 200, timeout=30)
        open_live(view, proxy)
        assert view.locator("#routes tbody").count() == 200  # one page, not 10,000 rows
        assert view.locator("#count").inner_text().startswith("10,000 domains")
        assert view.locator("#pageinfo").inner_text() == "Page 1 of 50"
        # By keyboard: Tab reaches the search box, Enter searches.
        for _ in range(10):
            view.keyboard.press("Tab")
            if view.evaluate("document.activeElement.id") == "q":
                break
        assert view.evaluate("document.activeElement.id") == "q"
        view.keyboard.type("d04242.")
        view.keyboard.press("Enter")
        view.wait_for_function(
            "() => document.querySelectorAll('#routes tbody').length === 1", timeout=FOLLOW_MS
        )
        assert group(view, "d04242.example.com").count() == 1
        assert view.locator("#count").inner_text().startswith("1 domain containing")
        assert "q=d04242." in view.url
        # The next page, by keyboard too, after clearing the search.
        view.fill("#q", "")
        view.keyboard.press("Enter")
        view.wait_for_function("() => document.querySelectorAll('#routes tbody').length === 200")
        view.focus("#next")
        view.keyboard.press("Enter")
        view.wait_for_selector("#pageinfo:text-is('Page 2 of 50')", timeout=FOLLOW_MS)
        assert group(view, "d00200.example.com").count() == 1


def test_an_ejected_instance_shows_with_its_reason(
    gogeta: Start, etcd: EtcdServer, page: tuple[Page, Console]
) -> None:
    view, _ = page
    with Backend() as backend:
        put_many(etcd, [
            *domain_keys("shop.example.com", "shop"),
            ("/services/shop/1/location", location(free_port())),  # refused
            ("/services/shop/2/location", location(backend.port)),
            ("/services/shop/3/location", "not json"),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url, "-ejectSeconds", "60")
        wait_until(lambda: proxy.get("/", host="shop.example.com").status == 200)
        routes = json.loads(proxy.get("/__gogeta/routes").body)
        assert not routes["services"]["shop"][0]["routable"]  # tried first, ejected
        open_live(view, proxy)
    first, _, third = (group(view, "shop.example.com").locator("tr").nth(i) for i in range(3))
    assert first.locator(".badge.ejected").inner_text() == "ejected"
    why = first.locator("td[data-label='Why not routable']").inner_text()
    assert why.startswith("ejected until ") and "a recent exchange failed" in why
    assert "invalid location: location is not JSON" in third.inner_text()
    errors = first.locator("td[data-label=Errors]").inner_text()
    assert int(errors) >= 1  # the failed exchange counts against that instance


def test_on_a_phone_in_dark_mode_nothing_overflows(
    gogeta: Start, etcd: EtcdServer, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    view = context.new_page()
    console = Console(view)
    try:
        put_many(etcd, [
            *domain_keys("a-rather-long-hostname-for-a-phone.customers.example.com", "shop"),
            ("/services/shop/1/location", location(free_port())),
        ])  # fmt: skip
        proxy = gogeta("-etcdAddress", etcd.url)
        open_live(view, proxy)
        group(view, "a-rather-long-hostname-for-a-phone.customers.example.com").wait_for()
        assert view.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        background = view.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(14, 19, 28)"  # the dark palette
        # Laid out as cards, the rows are still a table to assistive technology.
        assert view.locator("#routes[role=table] td[role=cell]").count() > 0
    finally:
        context.close()
    assert console.errors == []


def test_an_untrusted_client_gets_404(gogeta: Start, browser: Browser) -> None:
    with Backend() as backend:
        proxy = gogeta(
            "-resolverType", "Dummy", "-dummyTarget", backend.url + "/",
            "-trustedNetworks", "10.0.0.0/8",
        )  # fmt: skip
        context = browser.new_context()
        try:
            view = context.new_page()
            answer = view.goto(f"http://127.0.0.1:{proxy.port}/__gogeta/")
            assert answer is not None and answer.status == 404
            assert "gogeta · live" not in view.content()
            data = view.goto(f"http://127.0.0.1:{proxy.port}/__gogeta/live")
            assert data is not None and data.status == 404
        finally:
            context.close()
    # The browser then asks for /favicon.ico, which goes to the backend like any path.
    assert not [seen for seen in backend.seen if seen.path.startswith("/__gogeta")]
