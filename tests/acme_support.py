"""A real ACME server for the tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS.

The mock DNS answers every name with 127.0.0.1 (and no IPv6), so pebble's HTTP-01
validation of any test domain reaches `http_port` on this machine: a gogeta's plain port.
pebble serves its ACME API with a certificate of a CA of the tests' own (tests/pki.py),
which gogeta trusts through `-acmeCaFile`; the root that signs what pebble issues comes from
its management API.
Installed by `make pebble` (the Makefile), as `make chromium` installs the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.request
from pathlib import Path

from tests.pki import Authority
from tests.support import LoggedProcess, free_port, port_open, wait_until

# Who serves pebble's own API: not the CA of what it issues.
API_CA = Authority()


def pebble_missing() -> str | None:
    """Why pebble cannot run here, or None."""
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make pebble installs Debian's package)"
    return None


class Pebble:
    """pebble and its mock DNS on free loopback ports, validating HTTP-01 on `http_port`."""

    def __init__(self, directory: Path, http_port: int) -> None:
        self.directory = directory
        self.http_port = http_port
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.dns = LoggedProcess()
        self.server = LoggedProcess()
        self.ca_file = str(directory / "pebble-api-ca.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        self.directory.mkdir(parents=True, exist_ok=True)
        API_CA.write_cert(Path(self.ca_file))
        cert, key = API_CA.issue("127.0.0.1", "localhost").write(self.directory, "pebble")
        config = self.directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        self.dns.spawn(
            [
                "pebble-challtestsrv",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{free_port()}",
            ],
            dict(os.environ),
            "challtestsrv-",
        )
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random pause
            "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce answers
            "PEBBLE_AUTHZREUSE": "0",  # every order validates: the tests count validations
        }
        self.server.spawn(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            env,
            "pebble-",
        )
        wait_until(lambda: port_open(self.port), timeout=20, what="pebble to listen")
        wait_until(lambda: port_open(self.management_port), timeout=20, what="pebble management")
        return self

    def root(self) -> str:
        """The PEM root that signs the chains pebble issues."""
        context = ssl.create_default_context(cafile=self.ca_file)
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return str(answer.read().decode("ascii"))

    def validations(self) -> int:
        """How many challenges pebble validated (each from several perspectives), as its
        log tells."""
        return self.server.log().count("Pulled a task from the Tasks queue")

    def stop(self) -> None:
        self.server.stop()
        self.dns.stop()
