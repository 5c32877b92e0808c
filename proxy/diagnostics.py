"""What an operator asks a running process by signal (docs/behaviour.md §6): stacks, CPU profile.

Stacks come from `gevent.util.format_run_info`: every thread and every greenlet, with the
greenlet tree. The profiler is the standard `cProfile`, whose output `python -m pstats FILE`
reads. It hooks the interpreter's thread state, which all greenlets of the main thread
share, so the work of every greenlet is counted, whichever greenlet switched it on. A
greenlet switch happens inside a call, so call counts and own times are exact while the
cumulative time of a function that blocked can include other greenlets' work.
"""

from __future__ import annotations

import cProfile
import logging
import os
import tempfile

from gevent.util import format_run_info

log = logging.getLogger(__name__)


def stacks() -> str:
    """The stack of every thread and greenlet of this process, as text."""
    return "\n".join(format_run_info())


class CpuProfiler:
    """Start, then stop and write, a whole-process CPU profile: one toggle per SIGUSR2."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._profile: cProfile.Profile | None = None

    @property
    def running(self) -> bool:
        return self._profile is not None

    def toggle(self) -> None:
        if self._profile is None:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        profile = cProfile.Profile()
        profile.enable()
        self._profile = profile
        log.warning("CPU profiling started; the next SIGUSR2 writes %s", self.path)

    def stop(self) -> None:
        profile, self._profile = self._profile, None
        if profile is None:
            return
        profile.disable()
        # Written beside the target then renamed, so a reader never sees half a file.
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".gogeta-prof-", dir=directory)
            os.close(fd)
            profile.dump_stats(tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write the CPU profile to %s: %s", self.path, exc)
            return
        log.warning("CPU profile written to %s (read it with: python -m pstats FILE)", self.path)
