"""Which requests wake a passivated application (README, "Wake-ups").

Only visitors do: not HEAD or OPTIONS, not `/favicon.ico`, not a User-Agent matching
`-noWakeUserAgents` (crawlers and scanners by default). The others get the same 503 wait
page and nothing is written to etcd.

"Nothing was written" is proved by order, not by waiting: gogeta writes its wake-ups from
one queue, in the order the requests asked for them. After the requests under test, a
browser wakes a second application; once that write is in etcd, a wake-up asked before it
would be there too.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import settings
from proxy.wake import MAX_REMEMBERED, WakeFilter
from tests.etcd_routes import (
    Barrier,
    key_writes,
    marker_templates,
    named_backend,
    page_of,
    write_domain,
    write_instance,
)
from tests.support import ROOT, Backend, EtcdServer, GogetaProcess, Start, exchange, wait_until

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# User-Agents the default pattern must catch, and ones it must leave alone.
CRAWLERS_AND_SCANNERS = [
    GOOGLEBOT,
    "Googlebot-Image/1.0",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    "Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)",
    "CCBot/2.0 (https://commoncrawl.org/faq/)",
    "Mozilla/5.0 (compatible; SomeCrawler/1.0)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 zgrab/0.x",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
    "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:Port Check)",
    "sqlmap/1.7.2#stable (https://sqlmap.org)",
]
VISITORS = [
    CHROME,
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "PostmanRuntime/7.37.3",
]


@pytest.mark.parametrize("agent", CRAWLERS_AND_SCANNERS)
def test_the_default_pattern_catches_crawlers_and_scanners(agent: str) -> None:
    pattern = settings.parse([], {}).noWakeUserAgents
    assert pattern is not None
    assert pattern.search(agent), agent


@pytest.mark.parametrize("agent", VISITORS)
def test_the_default_pattern_leaves_browsers_and_api_clients(agent: str) -> None:
    pattern = settings.parse([], {}).noWakeUserAgents
    assert pattern is not None
    assert not pattern.search(agent), agent


def test_the_readme_shows_the_default_pattern() -> None:
    assert f"\n  {settings.NO_WAKE_USER_AGENTS}\n" in (ROOT / "README.md").read_text()


def test_the_filter_remembers_a_bounded_number_of_user_agents() -> None:
    wake_filter = WakeFilter(settings.parse([], {}).noWakeUserAgents)
    for i in range(3 * MAX_REMEMBERED):
        assert wake_filter.wakes("GET", "/", f"Browser/{i}")
    assert not wake_filter.wakes("GET", "/", GOOGLEBOT)
    assert not wake_filter.wakes("GET", "/", GOOGLEBOT)
    assert len(wake_filter._known) <= MAX_REMEMBERED


# --------------------------------------------------------------------------- against etcd


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marker_templates(tmp_path_factory.mktemp("wake-filter"))


@pytest.fixture(scope="module")
def proxy(etcd_server: EtcdServer, templates: Path) -> Iterator[GogetaProcess]:
    proc = GogetaProcess(["-etcdAddress", etcd_server.url, "-templateDir", str(templates)])
    yield proc.start()
    proc.stop()


@pytest.fixture(scope="module")
def app() -> Iterator[Backend]:
    with named_backend("app") as backend:
        yield backend


@pytest.fixture
def client(etcd: EtcdServer) -> Any:
    return etcd.client()


@pytest.fixture
def sync(client: Any, app: Backend) -> Barrier:
    return Barrier(client, app)


_names = itertools.count(1)  # never reused: gogeta remembers whom it woke


class Sleeper:
    """A passivated application with one instance, at `NAME.test`."""

    def __init__(self, client: Any, app: Backend) -> None:
        self.client = client
        self.name = f"sleeper{next(_names)}"
        self.host = f"{self.name}.test"
        base = write_instance(client, self.name, "1", app.port, ("stopped", "passivated", None))
        write_domain(client, self.host, "service", self.name)
        self.key = f"{base}/status/expected"
        self.since = int(client.read(self.key).modifiedIndex) + 1

    def expected(self) -> str:
        return str(self.client.read(self.key).value)

    def writes(self) -> list[str]:
        return [w.value for w in key_writes(self.client, self.key, self.since)]


def assert_not_woken(proxy: GogetaProcess, sleepers: list[Sleeper], sync: Barrier) -> None:
    """No wake-up was asked for `sleepers` by the requests sent so far."""
    client, app = sleepers[0].client, sync.backend
    witness = Sleeper(client, app)
    sync(proxy)
    assert page_of(proxy.get(host=witness.host, headers={"User-Agent": CHROME})) == "passivated"
    wait_until(lambda: witness.expected() == "started", what="the witness's wake-up")
    for sleeper in sleepers:
        assert sleeper.writes() == [], sleeper.name
        assert sleeper.expected() == "passivated"


def assert_woken(sleeper: Sleeper) -> None:
    wait_until(lambda: sleeper.expected() == "started", what=f"{sleeper.name}'s wake-up")
    assert sleeper.writes() == ["started"]


NOT_VISITORS = [
    pytest.param("HEAD", "/", {"User-Agent": CHROME}, id="HEAD"),
    pytest.param("OPTIONS", "/", {"User-Agent": CHROME}, id="OPTIONS"),
    pytest.param("OPTIONS", "*", {}, id="OPTIONS-star"),
    pytest.param("GET", "/favicon.ico", {"User-Agent": CHROME}, id="favicon"),
    pytest.param("GET", "/favicon.ico?v=2", {"User-Agent": CHROME}, id="favicon-query"),
    pytest.param("GET", "/", {"User-Agent": GOOGLEBOT}, id="googlebot"),
    pytest.param("GET", "/about", {"User-Agent": "Mozilla/5.0 zgrab/0.x"}, id="zgrab"),
    pytest.param("POST", "/login", {"User-Agent": "masscan/1.3"}, id="masscan-post"),
]


@pytest.mark.parametrize(("method", "path", "headers"), NOT_VISITORS)
def test_requests_that_are_not_visitors_get_the_wait_page_and_wake_nothing(
    proxy: GogetaProcess,
    client: Any,
    app: Backend,
    sync: Barrier,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    sleeper = Sleeper(client, app)
    sync(proxy)
    for _ in range(3):
        resp = proxy.get(path, host=sleeper.host, method=method, headers=headers)
        assert resp.status == 503
        if method != "HEAD":
            assert page_of(resp) == "passivated"
    assert_not_woken(proxy, [sleeper], sync)
    assert not [s for s in app.seen if s.header("Host") == sleeper.host]


def test_the_user_agent_is_matched_whatever_its_case(
    proxy: GogetaProcess, client: Any, app: Backend, sync: Barrier
) -> None:
    sleeper = Sleeper(client, app)
    sync(proxy)
    answer = exchange(
        proxy.port,
        f"GET / HTTP/1.1\r\nHost: {sleeper.host}\r\nuser-agent: MY-SPIDER/1.0\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"page=passivated" in answer
    assert_not_woken(proxy, [sleeper], sync)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"User-Agent": CHROME}, id="browser"),
        pytest.param({"User-Agent": "curl/8.5.0"}, id="curl"),
        pytest.param({"User-Agent": "python-requests/2.31.0"}, id="api-client"),
        pytest.param({}, id="no-user-agent"),
    ],
)
def test_a_visitor_wakes_the_application(
    proxy: GogetaProcess, client: Any, app: Backend, sync: Barrier, headers: dict[str, str]
) -> None:
    sleeper = Sleeper(client, app)
    sync(proxy)
    resp = proxy.get("/", host=sleeper.host, headers=headers)
    assert (resp.status, page_of(resp)) == (503, "passivated")
    assert_woken(sleeper)


def test_a_crawler_after_a_visitor_sees_the_same_wait_page(
    proxy: GogetaProcess, client: Any, app: Backend, sync: Barrier
) -> None:
    sleeper = Sleeper(client, app)
    sync(proxy)
    assert page_of(proxy.get(host=sleeper.host, headers={"User-Agent": CHROME})) == "passivated"
    assert_woken(sleeper)
    sync(proxy)  # gogeta has seen its own write: stopped/started, being woken
    resp = proxy.get(host=sleeper.host, headers={"User-Agent": GOOGLEBOT})
    assert (resp.status, page_of(resp)) == (503, "passivated")


def test_the_env_resolver_filters_too(
    gogeta: Start, etcd: EtcdServer, templates: Path, client: Any, app: Backend, sync: Barrier
) -> None:
    # Env: the service is the hostname's first label, no /domains needed.
    proxy = etcd_proxy(gogeta, etcd, templates, "-resolverType", "Env")
    crawled, visited = Sleeper(client, app), Sleeper(client, app)
    wait_until(lambda: proxy.get(host=f"{visited.name}.env.test").status == 503)
    assert_woken(visited)
    resp = proxy.get(host=f"{crawled.name}.env.test", headers={"User-Agent": GOOGLEBOT})
    assert (resp.status, page_of(resp)) == (503, "passivated")
    # The witness: sync's barrier, which the Env resolver routes by its first label too.
    sync(proxy, writer=True)
    assert crawled.writes() == []


# --------------------------------------------------------------------------- the flags


def etcd_proxy(
    gogeta: Start, etcd: EtcdServer, templates: Path, *flags: str, **env: str
) -> GogetaProcess:
    return gogeta("-etcdAddress", etcd.url, "-templateDir", str(templates), *flags, env=env)


def test_the_pattern_can_be_replaced(
    gogeta: Start, etcd: EtcdServer, templates: Path, client: Any, app: Backend, sync: Barrier
) -> None:
    proxy = etcd_proxy(gogeta, etcd, templates, "-noWakeUserAgents", "^acme-monitor/")
    monitored, crawled = Sleeper(client, app), Sleeper(client, app)
    sync(proxy)
    for agent in ("acme-monitor/1.0", "ACME-Monitor/2.3"):
        resp = proxy.get(host=monitored.host, headers={"User-Agent": agent})
        assert (resp.status, page_of(resp)) == (503, "passivated")
    assert_not_woken(proxy, [monitored], sync)
    # Replaced, not added to: Googlebot is a visitor now.
    assert page_of(proxy.get(host=crawled.host, headers={"User-Agent": GOOGLEBOT})) == "passivated"
    assert_woken(crawled)


def test_an_empty_pattern_lets_every_user_agent_wake(
    gogeta: Start, etcd: EtcdServer, templates: Path, client: Any, app: Backend, sync: Barrier
) -> None:
    proxy = etcd_proxy(gogeta, etcd, templates, GOGETA_NO_WAKE_USER_AGENTS="")
    headed, crawled = Sleeper(client, app), Sleeper(client, app)
    sync(proxy)
    assert proxy.get(host=headed.host, method="HEAD").status == 503  # methods still count
    assert_not_woken(proxy, [headed], sync)
    assert page_of(proxy.get(host=crawled.host, headers={"User-Agent": GOOGLEBOT})) == "passivated"
    assert_woken(crawled)


def test_a_request_that_does_not_wake_is_not_held(
    gogeta: Start, etcd: EtcdServer, templates: Path, client: Any, app: Backend, sync: Barrier
) -> None:
    proxy = etcd_proxy(gogeta, etcd, templates, "-wakeHoldSeconds", "30")
    sleeper = Sleeper(client, app)
    sync(proxy)
    for method, agent in (("HEAD", CHROME), ("GET", GOOGLEBOT)):
        sent = time.monotonic()
        resp = proxy.get(host=sleeper.host, method=method, headers={"User-Agent": agent})
        assert resp.status == 503
        assert time.monotonic() - sent < 5  # at once, not after -wakeHoldSeconds
    # The witness of assert_not_woken would be held itself: the writer barrier proves the
    # same order (its lastAccess is written after anything queued before it).
    sync(proxy, writer=True)
    assert sleeper.writes() == []
    assert sleeper.expected() == "passivated"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["-noWakeUserAgents", "(bot"], {}, "-noWakeUserAgents"),
        (["-noWakeUserAgents=bot|*crawler"], {}, "-noWakeUserAgents"),
        ([], {"GOGETA_NO_WAKE_USER_AGENTS": "[a-"}, "GOGETA_NO_WAKE_USER_AGENTS"),
    ],
)
def test_a_bad_pattern_exits_2_naming_the_setting(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "gogeta.py"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr
