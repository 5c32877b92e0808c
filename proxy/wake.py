"""Which requests may wake a sleeping application (README, "Wake-ups").

Waking one starts a container on the platform, so only a visitor's request does it. HEAD
and OPTIONS (monitors, CORS preflights), `/favicon.ico` (fetched on its own by browsers and
tools) and User-Agents matching `-noWakeUserAgents` (crawlers and scanners by default) get
the same wait page without waking anything. This module sees a method, a path and a
User-Agent, nothing of WSGI; the resolver is told the answer as a bool.
"""

from __future__ import annotations

import re

NOT_WAKING_METHODS = frozenset({"HEAD", "OPTIONS"})
NOT_WAKING_PATHS = frozenset({"/favicon.ico"})
MAX_REMEMBERED = 4096  # distinct User-Agents kept; more clears the memory


class WakeFilter:
    """`wakes(...)`: whether a request looks like a visitor's.

    The pattern's answer is remembered per User-Agent string: a search costs several
    microseconds, and a few browsers' strings make most of the traffic.
    """

    def __init__(self, agents: re.Pattern[str] | None) -> None:
        self.agents = agents  # None: no User-Agent is refused
        self._known: dict[str, bool] = {}

    def wakes(self, method: str, path: str, user_agent: str) -> bool:
        if method in NOT_WAKING_METHODS or path in NOT_WAKING_PATHS:
            return False
        if self.agents is None or not user_agent:
            return True
        known = self._known.get(user_agent)
        if known is None:
            known = self.agents.search(user_agent) is None
            if len(self._known) >= MAX_REMEMBERED:  # bounded: clients inventing agents
                self._known.clear()
            self._known[user_agent] = known
        return known
