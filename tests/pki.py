"""Every certificate the tests use, made here with trustme: CAs and the leaves they sign.

`Authority` is one CA: it issues leaves (for hostnames, wildcards, IP addresses), as PEM
text and as files, and writes the files an https etcd with client certificates takes.
`CA` is the authority the TLS tests share. This module starts nothing and opens no
socket: it is the bottom of the tests' helpers.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme


@dataclass(frozen=True)
class Leaf:
    """A certificate an Authority issued: its PEM chain (leaf first), key, and leaf DER."""

    chain: str
    key: str
    der: bytes

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        """The pair as files `name.pem` and `name.key` (for -tlsCertFile, -tlsKeyFile...)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_text(self.chain)
        key.write_text(self.key)
        key.chmod(0o600)
        return str(cert), str(key)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a CA, a server certificate and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class Authority:
    """A CA of the tests' own, trusted only by the clients and servers told of it.

    Every leaf carries both extended key usages, serverAuth and clientAuth: etcd's v3
    gateway dials etcd's own gRPC port with the server certificate as a client when
    `--client-cert-auth` is on, and a client certificate needs clientAuth.
    """

    def __init__(self) -> None:
        self._ca = trustme.CA()

    @property
    def cert_pem(self) -> str:
        return self._ca.cert_pem.bytes().decode()

    def write_cert(self, path: Path) -> Path:
        """The CA's certificate as a PEM file (for -etcdCaFile, -acmeCaFile...)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.cert_pem)
        return path

    def configure_trust(self, context: ssl.SSLContext) -> None:
        self._ca.configure_trust(context)

    def issue(self, *names: str, **kwargs: Any) -> Leaf:
        """A leaf for `names` (SANs); `kwargs` as trustme's (common_name, not_after...)."""
        cert = self._ca.issue_cert(*names, **kwargs)
        chain = "".join(blob.bytes().decode() for blob in cert.cert_chain_pems)
        return Leaf(chain, cert.private_key_pem.bytes().decode(), leaf_der(chain))

    def etcd_files(self, directory: Path) -> TlsFiles:
        """This CA, a server certificate for 127.0.0.1 and localhost, and a client
        certificate (CN gogeta, as etcd names a certificate's user), as files in `directory`."""
        server_cert, server_key = self.issue("127.0.0.1", "localhost").write(directory, "server")
        client_cert, client_key = self.issue("gogeta", common_name="gogeta").write(
            directory, "client"
        )
        return TlsFiles(
            ca=self.write_cert(directory / "ca.pem"),
            server_cert=Path(server_cert),
            server_key=Path(server_key),
            client_cert=Path(client_cert),
            client_key=Path(client_key),
        )


def leaf_der(chain: str) -> bytes:
    """The DER of the first certificate of a PEM chain."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(chain[: chain.index(end) + len(end)] + "\n")


CA = Authority()


def issue(*names: str, **kwargs: Any) -> Leaf:
    """A leaf of the shared CA, the one the tests' TLS clients trust."""
    return CA.issue(*names, **kwargs)
