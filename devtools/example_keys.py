"""The example's keys in etcd, through either API: the route, the certificate, who owns it.

`make run` (devtools/run_example.py) writes these as an operator would (docs/behaviour.md
§1, §9): python-etcd for v2, the JSON gateway for v3. Nothing here starts a process.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOMAIN = "example.localhost"
SERVICE = "example"


def log(message: str) -> None:
    print(f"run: {message}", flush=True)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _prefix_end(prefix: str) -> str:
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode("ascii")


def v3_call(host: str, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to etcd's v3 JSON gateway (POST, keys and values base64)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"etcd answered {status} to {path}: {data[:200]!r}")
    answer: dict[str, Any] = json.loads(data)
    return answer


def v3_keys(host: str, port: int, prefix: str) -> list[tuple[str, str]]:
    """(key, value) of every key under `prefix` + "/", through etcd's v3 API."""
    below = prefix + "/"
    answer = v3_call(
        host, port, "/v3/kv/range", {"key": _b64(below), "range_end": _prefix_end(below)}
    )
    return [
        (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode())
        for kv in answer.get("kvs", [])
    ]


def _keys_of(host: str, port: int, prefix: str, api: str) -> list[tuple[str, str]]:
    if api == "v3":
        return v3_keys(host, port, prefix)
    import etcd  # python-etcd: untyped, its Any stays in this function

    client = etcd.Client(host=host, port=port, read_timeout=5)
    try:
        nodes = list(client.read(prefix, recursive=True).leaves)
    except etcd.EtcdKeyNotFound:
        return []
    return [(str(node.key), str(node.value)) for node in nodes if not node.dir]


def live_instances(host: str, port: int, service_dir: str, api: str = "v2") -> list[str]:
    """The example's instances in etcd that accept a connection: another example's."""
    live = []
    for key, value in _keys_of(host, port, f"{service_dir}/{SERVICE}", api):
        if not key.endswith("/location"):
            continue
        try:
            location = json.loads(value)
            where = (str(location["host"]), int(location["port"]))
        except (TypeError, ValueError, KeyError):
            continue
        if port_open(*where):
            live.append(f"{where[0]}:{where[1]}")
    return live


def write_route(
    host: str, port: int, domain_dir: str, service_dir: str, ports: list[int], api: str = "v2"
) -> None:
    """The example route (docs/behaviour.md §1): a service domain, its service, an instance
    per port."""
    service = f"{service_dir}/{SERVICE}"
    if api == "v3":
        below = service + "/"  # drop instances of an older run
        v3_call(
            host, port, "/v3/kv/deleterange", {"key": _b64(below), "range_end": _prefix_end(below)}
        )

    else:
        import etcd  # python-etcd: untyped, its Any stays in this function

        client = etcd.Client(host=host, port=port, read_timeout=5)
        try:
            client.delete(service, recursive=True, dir=True)  # drop instances of an older run
        except etcd.EtcdKeyNotFound:
            pass
    write = writer(host, port, api)
    write(f"{domain_dir}/{DOMAIN}/type", "service")
    write(f"{domain_dir}/{DOMAIN}/value", SERVICE)
    for index, p in enumerate(ports, start=1):
        location = json.dumps({"host": "127.0.0.1", "port": p}, separators=(",", ":"))
        write(f"{service}/{index}/location", location)
        log(f"etcd: {service}/{index}/location = {location}")
    log(f"etcd: {domain_dir}/{DOMAIN}/type = service, value = {SERVICE}")


def writer(host: str, port: int, api: str) -> Callable[[str, str], object]:
    """A key write through etcd's `api` (v2: python-etcd; v3: the JSON gateway)."""
    if api == "v3":

        def write(key: str, value: str) -> object:
            return v3_call(host, port, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

        return write
    import etcd  # python-etcd: untyped, its Any stays in this function

    written: Callable[[str, str], object] = etcd.Client(host=host, port=port, read_timeout=5).write
    return written


def write_certificate(host: str, port: int, cert_dir: str, tls_dir: Path, api: str = "v2") -> Path:
    """A CA of this run's own, a certificate it signs for the example, stored in etcd.

    Returns the CA's file, which a client trusts with `curl --cacert`. Made with trustme
    (a test tool in requirements-dev.txt), fresh each run; the key only goes to etcd.
    """
    import trustme

    ca = trustme.CA(organization_name="gogeta make run")
    leaf = ca.issue_cert(DOMAIN)
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_file = tls_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    write = writer(host, port, api)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    write(f"{cert_dir}/{DOMAIN}/cert", chain)
    write(f"{cert_dir}/{DOMAIN}/key", leaf.private_key_pem.bytes().decode())
    log(f"etcd: {cert_dir}/{DOMAIN}/cert and /key (signed by {ca_file})")
    return ca_file
