"""devtools/etcd_v2_to_v3.py: a platform's routes copied from v2 to v3, then routed by v3."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.etcd3_client import V3Client, b64
from tests.etcd_routes import named_backend, write_domain, write_instance
from tests.support import ROOT, Backend, EtcdServer, Start, wait_until

SCRIPT = str(ROOT / "devtools" / "etcd_v2_to_v3.py")


@pytest.fixture
def app() -> Iterator[Backend]:
    with named_backend("moved") as backend:
        yield backend


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_routes_copied_to_v3_are_routed_by_v3(
    etcd: EtcdServer, gogeta: Start, app: Backend
) -> None:
    # One etcd 3.5 with --enable-v2 serves both key spaces, apart: v3 starts empty.
    v2 = etcd.client()
    v3 = V3Client(etcd.url)
    v3.delete("/domains", recursive=True)
    v3.delete("/services", recursive=True)
    write_instance(v2, "moved", "1", app.port, ("started", "started", None))
    v2.write("/services/moved/1/status/alive", "1", ttl=60)
    write_domain(v2, "moved.test", "service", "moved")
    v2.write("/services/empty", None, dir=True)

    dry = migrate("--from", etcd.url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would put /domains/moved.test/type = 'service'" in dry.stdout
    with pytest.raises(KeyError):
        v3.read("/domains/moved.test/type")

    done = migrate("--from", etcd.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("6 keys copied from /domains, /services"), done.stdout
    assert v3.read("/domains/moved.test/value").value == "moved"
    alive = v3.call("/v3/kv/range", {"key": b64("/services/moved/1/status/alive")})["kvs"][0]
    assert int(alive.get("lease", 0)) != 0  # still expires
    try:
        proxy = gogeta("-etcdAddress", etcd.url, "-etcdApi", "v3")
        wait_until(
            lambda: (r := proxy.get(host="moved.test")).status == 200 and r.text == "moved",
            timeout=10,
            what="the copied route routed through v3",
        )
    finally:
        v3.delete("/domains", recursive=True)
        v3.delete("/services", recursive=True)


def test_an_etcd_without_v2_is_said_in_one_line(etcd_servers: dict[str, EtcdServer]) -> None:
    if "v3" not in etcd_servers:
        etcd_servers["v3"] = EtcdServer(api="v3").start()
    done = migrate("--from", etcd_servers["v3"].url)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "v2 read of /domains" in line and "404" in line, line
