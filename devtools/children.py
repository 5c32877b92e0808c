"""The processes a devtools script starts, and its waits: both end cleanly on a signal.

Children run in their own process group, so a Ctrl-C in the terminal reaches the script
only and the shutdown order stays the script's; on Linux they are also told to die with
it. Once `stop_on_signals` has run, SIGINT or SIGTERM only sets a flag: `wait_for` then
raises `Stopping`, and the script unwinds and stops what it started. Rule: standard library
and devtools only, nothing of gogeta imported.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from devtools.example_keys import log

ROOT = Path(__file__).resolve().parent.parent


class Stopping(Exception):
    """SIGINT or SIGTERM arrived: unwind and stop what was started."""


_stop = threading.Event()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop.set()


def stop_on_signals() -> None:
    """From now on SIGINT and SIGTERM set the flag `stopped` and `wait_for` read."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


def stopped(timeout: float = 0.0) -> bool:
    """Whether SIGINT or SIGTERM has arrived, waiting up to `timeout` seconds for one."""
    return _stop.wait(timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; raise Stopping on a signal, RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if _stop.is_set():
            raise Stopping
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        _stop.wait(0.05)


def _pdeathsig() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux for SIGTERM when this script dies (even by SIGKILL).

    libc is looked up here, in the parent: the hook itself only makes one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


_DIE_WITH_PARENT = _pdeathsig()


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Any:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            process_group=0,
            preexec_fn=_DIE_WITH_PARENT,
        )


def terminate(proc: Any, name: str, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout:.0f}s: killing it")
            proc.kill()
            proc.wait()
    log(f"{name} stopped (exit {proc.returncode})")
