"""Which peers gogeta believes: a pure check of an address against a list of networks.

Two lists use it: `-trustedProxies` (whose X-Forwarded-* headers are believed, README
"Trusted proxies") and `-trustedNetworks` (who may read the admin paths). The request path
asks once per request, so `TrustedPeers` remembers its answer per address string.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REMEMBERED = 4096  # distinct peer addresses kept; more clears the memory


def is_trusted(address: str | None, networks: Sequence[Network]) -> bool:
    """Whether `address` (REMOTE_ADDR: an IP, maybe with a zone) is in one of `networks`."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack listener
    return any(ip in net for net in networks)


class TrustedPeers:
    """`is_trusted` for one list of networks, remembered per address string."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}

    def __contains__(self, address: str | None) -> bool:
        if not self.networks or not address:
            return False
        known = self._known.get(address)
        if known is None:
            known = is_trusted(address, self.networks)
            if len(self._known) >= MAX_REMEMBERED:  # bounded: many distinct clients
                self._known.clear()
            self._known[address] = known
        return known
