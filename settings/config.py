"""The typed view of the settings: a frozen `Config`, one field per row of the table.

Fields are named exactly like the flags and follow the table's order; importing this
module checks that they do, so a row without its field (or the reverse) fails at once.
A `Config` is plain data: it is made by `settings.parse` and read by everything else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings.table import SETTINGS
from settings.values import Network


@dataclass(frozen=True, slots=True)
class Config:
    """Parsed settings, typed: one field per row of SETTINGS, named exactly like the flag.

    The table is the one source of flags, variables, `-h` and the README's table; this is
    its typed view, checked against it when this module loads (`_check_config_fields`).
    """

    port: int
    listenAddress: str
    tlsPort: int
    domainDir: str
    serviceDir: str
    certDir: str
    tlsCertFile: str
    tlsKeyFile: str
    acmeDirectory: str
    acmeEmail: str
    acmeCaFile: str
    acmeHoldSeconds: float
    etcdAddress: tuple[str, ...]
    etcdApi: str
    etcdCaFile: str
    etcdCertFile: str
    etcdKeyFile: str
    etcdUsername: str
    etcdPassword: str = field(repr=False)
    resolverType: str
    templateDir: Path
    lastAccessInterval: int
    forceFwSsl: bool
    hstsMaxAge: int
    UrlHeaderParam: str
    cpuProfile: str
    drainTimeout: float
    accessLog: str
    accessLogHealth: bool
    healthGraceSeconds: float
    trustedNetworks: tuple[Network, ...]
    trustedProxies: tuple[Network, ...]
    dummyTarget: str
    connectTimeout: float
    readTimeout: float
    clientTimeout: float
    wakeHoldSeconds: float
    noWakeUserAgents: re.Pattern[str] | None
    maxBodySize: int
    ejectSeconds: float
    logLevel: str

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _check_config_fields() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    if names != [s.name for s in SETTINGS]:
        raise AssertionError(
            f"settings.Config fields {names} must follow SETTINGS {[s.name for s in SETTINGS]}"
        )


_check_config_fields()
