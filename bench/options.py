"""Every BENCH_* and SOAK_* variable, read here and nowhere else.

Rule: bench/README.md and bench/SOAK.md document each of these; a variable added, removed
or given another default here changes them too.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

ALL_TIERS = (1_000, 10_000, 100_000)  # part 3's domain counts, up to BENCH_SCALE


def recording(variable: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run was asked to record its results in the tree (`BENCH_RECORD=1`)."""
    return environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


def _number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


def _int(name: str, default: int) -> int:
    return int(_number(name, default))


@dataclass(frozen=True)
class BenchOptions:
    seconds: int  # wrk duration of one measurement
    rounds: int  # part 1: rounds, in alternating order
    parts: tuple[int, ...]
    cases: tuple[tuple[str, int], ...]  # part 1: (path, connections)
    tiers: tuple[int, ...]  # part 3: domain counts
    trials: int  # part 2: trials per kind
    connections: int  # part 4: idle keep-alive connections
    reference: str  # part 1: a reference proxy's command, with {port} and {etcd}; "" for none

    @classmethod
    def from_env(cls) -> BenchOptions:
        scale = _int("BENCH_SCALE", 10_000)
        cases = []
        for item in os.environ.get("BENCH_CASES", "small:50,small:1,big:50,big:1").split(","):
            path, _, conns = item.strip().partition(":")
            if path not in ("small", "big") or not conns.isdigit():
                raise SystemExit(f"BENCH_CASES: {item!r} is not small:N or big:N")
            cases.append((path, int(conns)))
        parts = os.environ.get("BENCH_PARTS", "1,2,3,4,5")
        return cls(
            seconds=max(1, _int("BENCH_SECONDS", 10)),
            rounds=max(1, _int("BENCH_ROUNDS", 3)),
            parts=tuple(int(p) for p in parts.split(",") if p.strip()),
            cases=tuple(cases),
            tiers=tuple(t for t in ALL_TIERS if t <= scale) or (scale,),
            trials=max(1, _int("BENCH_TRIALS", 50)),
            connections=max(1, _int("BENCH_CONNECTIONS", 10_000)),
            reference=os.environ.get("BENCH_REFERENCE", "").strip(),
        )

    @staticmethod
    def record() -> bool:
        return recording("BENCH_RECORD")

    @staticmethod
    def command_line() -> str:
        """The command that reproduces this run, with its BENCH_* variables (paths shown
        as `without_paths` shows them)."""
        keys = sorted(k for k in os.environ if k.startswith("BENCH_"))
        prefix = " ".join(f"{k}={os.environ[k]}" for k in keys)
        return without_paths((prefix + " make bench").strip())


# An absolute path, alone or after `=`: up to the next space or quote.
_ABSOLUTE = re.compile(r"(?<![\w.~:/-])/[^\s'\"]+")  # not a URL's path


def without_paths(text: str) -> str:
    """`text` with each absolute path shown as `<…/its last part>`: what a recorded run
    writes into the tree must not hold this machine's folders (a reference binary's, say)."""
    return _ABSOLUTE.sub(lambda m: f"<…/{m.group(0).rstrip('/').rsplit('/', 1)[-1]}>", text)


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    concurrency: int
    backends: int
    churn_ms: float
    warmup_seconds: float
    seed: int

    @classmethod
    def from_env(cls) -> SoakOptions:
        seed_text = os.environ.get("SOAK_SEED", "").strip()
        opts = cls(
            minutes=_number("SOAK_MINUTES", 2),
            concurrency=_int("SOAK_CONCURRENCY", 20),
            backends=_int("SOAK_BACKENDS", 4),
            churn_ms=_number("SOAK_CHURN_MS", 100),
            warmup_seconds=_number("SOAK_WARMUP_SECONDS", 15),
            seed=int(seed_text) if seed_text else random.randrange(1_000_000),
        )
        # Bounded whatever the environment says: loopback resources, not a stress test.
        if not 0 < opts.minutes <= 240:
            raise SystemExit("SOAK_MINUTES: between 0 and 240")
        if not 1 <= opts.concurrency <= 500:
            raise SystemExit("SOAK_CONCURRENCY: between 1 and 500")
        if not 2 <= opts.backends <= 32:
            raise SystemExit("SOAK_BACKENDS: between 2 and 32")
        if not 10 <= opts.churn_ms <= 60_000:
            raise SystemExit("SOAK_CHURN_MS: between 10 and 60000")
        return opts

    @staticmethod
    def record() -> bool:
        return recording("SOAK_RECORD")
