"""What every gogeta answers to an HTTP-01 validation request (docs/behaviour.md §10).

The challenge mirror's answer (resolvers/certs.py), or, when the mirror does not hold the
token (yet), etcd's own, read through the source. The validation is asked once and its
failure costs the name a backoff, so a watch that lags must not turn it into a 404. Only a
token of ACME's form (RFC 8555 §8.3: base64url, at least 128 bits) becomes an etcd key;
with etcd away the answer is None, as for a token nobody asked for. No WSGI here: the app
(proxy/app.py) is given the lookup as a function.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from errors import GogetaError

if TYPE_CHECKING:
    from resolvers.certs import ChallengeTree
    from resolvers.source import Source

log = logging.getLogger("gogeta")  # the process's own lines, beside gogeta.py's

TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")


def validation_answers(source: Source, challenges: ChallengeTree) -> Callable[[str], str | None]:
    """The key authorization for a token, looked up in `challenges`, then in etcd."""

    def answer(token: str) -> str | None:
        found = challenges.answer(token)
        if found is None and TOKEN.fullmatch(token):
            try:
                found = source.get(f"{challenges.prefix}/{token}")
            except GogetaError as exc:  # etcd away: nothing better to say than 404
                log.info("ACME challenge %s: not in the mirror, etcd unread: %s", token, exc)
        return found

    return answer
