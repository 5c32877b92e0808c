"""Per-name backoff after failed orders: 1 minute, doubling to 1 hour. Pure: no I/O.

ACME servers limit failed validations per account and name (Let's Encrypt: 5 an hour),
and a name that failed once (no DNS to us yet, a firewall) usually fails again for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST = 60.0
CAP = 3600.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A name's failed orders in a row, the last one's reason, and when to try again."""

    count: int
    reason: str
    at: float
    retry_at: float


def after_failure(previous: Failure | None, reason: str, now: float) -> Failure:
    """The failure that follows `previous` (None: the first in a row)."""
    count = 1 if previous is None else previous.count + 1
    delay = min(CAP, FIRST * 2 ** (count - 1))
    return Failure(count, reason, now, now + delay)
