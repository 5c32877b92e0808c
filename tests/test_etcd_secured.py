"""etcd as production runs it, v2 API: https with client certificates, and auth.

Each test starts its own etcd (the `start_etcd` fixture): https with certificates of a CA
made for it and `--client-cert-auth`; or auth enabled through the v2 auth API with a root
user and the guest role's permissions revoked, so an anonymous client is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcd_routes import log_count, named_backend, write_domain, write_instance
from tests.support import Backend, EtcdServer, GogetaProcess, Start, StartEtcd, wait_until

PASSWORD = "Zq9-hunter2-secret"


@pytest.fixture
def app() -> Iterator[Backend]:
    with named_backend("app") as backend:
        yield backend


@pytest.fixture
def tls_etcd(start_etcd: StartEtcd) -> EtcdServer:
    return start_etcd(tls=True)


@pytest.fixture
def auth_etcd(start_etcd: StartEtcd) -> EtcdServer:
    """An etcd with v2 auth on: user root (PASSWORD), anonymous clients refused."""
    node = start_etcd()
    assert node.call("PUT", "/v2/auth/users/root", {"user": "root", "password": PASSWORD})[0] in (
        200,
        201,
    )
    assert node.call("PUT", "/v2/auth/enable")[0] == 200
    node.username, node.password = "root", PASSWORD
    revoke = {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}}
    assert node.call("PUT", "/v2/auth/roles/guest", revoke)[0] == 200
    assert node.call("GET", "/v2/keys/", auth=("nobody", "x"))[0] == 401
    return node


def routed(proxy: GogetaProcess, host: str, timeout: float = 15) -> None:
    wait_until(
        lambda: (r := proxy.get(host=host)).status == 200 and r.text == "app",
        timeout=timeout,
        what=f"gogeta to route {host}",
    )


def health(proxy: GogetaProcess) -> tuple[int, str]:
    import json

    resp = proxy.get("/__gogeta/health")
    return resp.status, str(json.loads(resp.body).get("reason", ""))


def test_https_with_client_certificates(gogeta: Start, tls_etcd: EtcdServer, app: Backend) -> None:
    certs = tls_etcd.tls
    assert certs is not None
    client = tls_etcd.client()
    write_instance(client, "tls", "1", app.port)
    write_domain(client, "before.tls.test", "service", "tls")
    proxy = gogeta(
        "-etcdAddress", tls_etcd.url,
        "-etcdCaFile", str(certs.ca),
        "-etcdCertFile", str(certs.client_cert),
        "-etcdKeyFile", str(certs.client_key),
    )  # fmt: skip
    routed(proxy, "before.tls.test")
    write_domain(client, "after.tls.test", "service", "tls")  # through the watch
    routed(proxy, "after.tls.test")
    wait_until(  # and gogeta's own writes
        lambda: client.read("/services/tls/1/lastAccess").value,
        timeout=15,
        what="lastAccess written over TLS",
    )
    assert health(proxy)[0] == 200


def test_https_without_a_client_certificate_says_why(gogeta: Start, tls_etcd: EtcdServer) -> None:
    assert tls_etcd.tls is not None
    proxy = gogeta("-etcdAddress", tls_etcd.url, "-etcdCaFile", str(tls_etcd.tls.ca))
    wait_until(
        lambda: (h := health(proxy))[0] == 503 and "TLS" in h[1],
        timeout=15,
        what="health 503 naming TLS",
    )
    assert "-etcdCertFile" in health(proxy)[1]
    assert log_count(proxy, "TLS with etcd") == 1, proxy.log()


def test_auth_with_the_password_from_the_environment(
    gogeta: Start, auth_etcd: EtcdServer, app: Backend
) -> None:
    client = auth_etcd.client()
    write_instance(client, "auth", "1", app.port)
    write_domain(client, "before.auth.test", "service", "auth")
    proxy = gogeta(
        "-etcdAddress",
        auth_etcd.url,
        "-etcdUsername",
        "root",
        env={"GOGETA_ETCD_PASSWORD": PASSWORD},
    )
    routed(proxy, "before.auth.test")
    write_domain(client, "after.auth.test", "service", "auth")
    routed(proxy, "after.auth.test")
    wait_until(
        lambda: client.read("/services/auth/1/lastAccess").value,
        timeout=15,
        what="lastAccess written with credentials",
    )
    assert PASSWORD not in proxy.get("/__gogeta/routes").text
    assert PASSWORD not in proxy.log()


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["-etcdUsername", "root"], {"GOGETA_ETCD_PASSWORD": "wrong-" + PASSWORD}),
        ([], {}),  # no credentials at all
    ],
    ids=["wrong-password", "none"],
)
def test_refused_credentials_say_so_once(
    gogeta: Start, auth_etcd: EtcdServer, flags: list[str], env: dict[str, str]
) -> None:
    proxy = gogeta("-etcdAddress", auth_etcd.url, *flags, env=env)
    wait_until(
        lambda: (h := health(proxy))[0] == 503 and "credentials" in h[1],
        timeout=15,
        what="health 503 naming the credentials",
    )
    # gogeta keeps trying (an operator may fix the user in etcd): still one line.
    for _ in range(3):
        assert "credentials" in health(proxy)[1]
    wait_until(
        lambda: '"last_error"' in proxy.get("/__gogeta/routes").text,
        what="routes to answer",
    )
    assert log_count(proxy, "refused gogeta's credentials") == 1, proxy.log()
    assert log_count(proxy, "etcd unreachable") == 0, proxy.log()
    assert PASSWORD not in proxy.log()
    assert PASSWORD not in proxy.get("/__gogeta/routes").text
