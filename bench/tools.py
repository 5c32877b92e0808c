"""The programs `make bench` drives, found (or installed) once, and their versions.

Rule: the only place that looks for a binary or installs one; everything else gets a
`Tools`. nginx and wrk come from Debian, etcd and gunicorn from the virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from bench.harness import PYTHON, ROOT, etcd_binary, say


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str
    etcd: str
    gunicorn: str


def _nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def ensure_tools() -> Tools:
    """nginx and wrk from Debian (installed when missing, as root), etcd and gunicorn from
    the virtualenv; SystemExit naming the fix otherwise."""
    nginx, wrk = _nginx(), shutil.which("wrk")
    if not (nginx and wrk):
        if os.geteuid() != 0:
            raise SystemExit("bench needs nginx and wrk: sudo apt-get install -y nginx-light wrk")
        say("installing nginx-light and wrk from Debian")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        nginx, wrk = _nginx(), shutil.which("wrk")
        if not (nginx and wrk):
            raise SystemExit("bench: nginx or wrk still missing after apt-get install")
    try:
        etcd = etcd_binary()
    except RuntimeError as exc:
        raise SystemExit(f"bench: {exc}") from None
    gunicorn = Path(PYTHON).parent / "gunicorn"
    if not gunicorn.exists():
        raise SystemExit("bench needs gunicorn: pip install -r requirements-dev.txt")
    return Tools(nginx=nginx, wrk=wrk, etcd=etcd, gunicorn=str(gunicorn))


@dataclass(frozen=True)
class Machine:
    """Where and with what a run was measured: the head of every report."""

    date: str
    commit: str
    cpu: str
    cores: str
    kernel: str
    python: str
    gevent: str
    urllib3: str
    nginx: str
    wrk: str
    etcd: str
    gunicorn: str


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine(tools: Tools) -> Machine:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return Machine(
        date=datetime.now().isoformat(timespec="seconds"),
        commit=commit + ("+dirty" if dirty not in ("", "?") else ""),
        cpu=cpu,
        cores=str(os.cpu_count()),
        kernel=platform.release(),
        python=platform.python_version(),
        gevent=version("gevent"),
        urllib3=version("urllib3"),
        nginx=_first_line([tools.nginx, "-v"]),
        wrk=_first_line([tools.wrk, "-v"]),
        etcd=_first_line([tools.etcd, "--version"]),
        gunicorn=_first_line([tools.gunicorn, "--version"]),
    )
