"""etcd as platforms run it, for tests: TLS with client certificates, clusters, no v2.

`make_certificates` makes a CA and certificates signed by it with the `openssl` command;
`EtcdNode` is tests.support's `EtcdServer` with https client URLs (`--client-cert-auth`),
without the v2 API, or as one member of an `EtcdCluster` of three processes on loopback.
Nothing here depends on which etcd API gogeta speaks: the v2 and v3 tests share it.
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

from devtools.machine import etcd_binary
from tests.support import EtcdServer, TlsFiles, wait_until

# The PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate:
# the same record the v3 tests' etcd takes (tests/support.py).
Certificates = TlsFiles


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, extensions: str, ca_name: str) -> None:
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.crt", "-CAkey", f"{ca_name}.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.crt", cwd=directory,
    )  # fmt: skip


def make_certificates(directory: Path, ca_name: str = "ca") -> Certificates:
    """A fresh CA in `directory` and a server and a client certificate it signed.

    The server certificate carries both key usages: etcd's v3 gateway dials etcd's own
    gRPC port with it as a client when `--client-cert-auth` is on.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-sha256",
        "-subj", f"/CN=gogeta test {ca_name}", "-keyout", f"{ca_name}.key",
        "-out", f"{ca_name}.crt", cwd=directory,
    )  # fmt: skip
    _signed(
        directory,
        "server",
        "/CN=127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        ca_name,
    )
    _signed(
        directory,
        "client",
        "/CN=gogeta",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
        ca_name,
    )
    return Certificates(
        ca=directory / f"{ca_name}.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class EtcdNode(EtcdServer):
    """A real etcd 3.5: over https with `tls`, without v2 when `v2=False`, or a cluster member.

    `auth` (user, password) is what `client()` and the helpers send once etcd has auth on.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        tls: Certificates | None = None,
        v2: bool = True,
        name: str = "gogeta-test",
        ports: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(data_dir)
        if ports:  # another etcd at the address of one that is gone
            self.client_port, self.peer_port = ports
            self.log_path = self.log_path.with_name(f"etcd-{self.client_port}-again.log")
        self.tls = tls
        self.v2 = v2
        self.name = name
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.auth: tuple[str, str] | None = None
        # With the name and peer URLs, what etcd derives its cluster id from: a fresh data
        # directory started with the same three has the same cluster id.
        self.token = "gogeta-test"

    def argv(self) -> list[str]:
        argv = [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            "--log-level=error",
        ]
        if self.v2:
            argv.append("--enable-v2")
        if self.tls:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                "--client-cert-auth",
                f"--trusted-ca-file={self.tls.ca}",
            ]
        return argv

    def launch(self) -> None:
        """Start the process without waiting: cluster members wait for each other."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> EtcdNode:
        self.launch()
        wait_until(self.healthy, timeout=30, what=f"etcd {self.name} to answer")
        return self

    # ------------------------------------------------------------------ plain HTTP to it

    def connection(self, timeout: float = 2) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=timeout)
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.client_port, timeout=timeout, context=context
        )

    def call(
        self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request; `body` is sent as JSON."""
        headers = {"Content-Type": "application/json"}
        user = auth or self.auth
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
        conn = self.connection()
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            resp = conn.getresponse()
            data = resp.read().decode()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data

    def healthy(self) -> bool:
        try:
            status, body = self.call("GET", "/health")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def member_id(self) -> str:
        """This member's id, as v3 status answers name it."""
        _, body = self.call("POST", "/v3/maintenance/status", {})
        return str(body["header"]["member_id"])

    def leader_id(self) -> str:
        _, body = self.call("POST", "/v3/maintenance/status", {})
        return str(body.get("leader", ""))

    def client(self) -> Any:
        import etcd

        tls: dict[str, Any] = {}
        if self.tls:
            tls = {
                "protocol": "https",
                "ca_cert": str(self.tls.ca),
                "cert": (str(self.tls.client_cert), str(self.tls.client_key)),
            }
        user, password = self.auth or (None, None)
        return etcd.Client(
            host="127.0.0.1",
            port=self.client_port,
            read_timeout=5,
            username=user,
            password=password,
            **tls,
        )

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class EtcdCluster:
    """Three etcd members on loopback ports, one `--initial-cluster` naming all three."""

    def __init__(self, directory: Path, size: int = 3, tls: Certificates | None = None) -> None:
        self.members = [EtcdNode(directory / f"m{i}", tls=tls, name=f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.launch()
        for member in self.members:
            wait_until(member.healthy, timeout=60, what=f"cluster member {member.name}")
        return self

    def running(self) -> list[EtcdNode]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def leader(self) -> EtcdNode:
        """The member the running ones agree leads (waits for an election to settle)."""

        def agreed() -> EtcdNode | None:
            running = self.running()
            leaders = {m.leader_id() for m in running}
            if len(leaders) != 1 or "" in leaders or "0" in leaders:
                return None
            (leader,) = leaders
            return next((m for m in running if m.member_id() == leader), None)

        return wait_until(agreed, timeout=30, what="one leader")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
