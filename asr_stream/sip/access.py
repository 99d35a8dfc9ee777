"""Which source addresses may talk SIP to us: a CIDR allow-list, checked per datagram and per TCP accept.

Telephony signalling normally comes from a handful of known SBCs and PBXs, so an allow-list is
the cheapest protection against the SIP scanners that sweep every public port 5060. It is no
substitute for a firewall (a spoofed UDP source passes it), which is why digest authentication
exists next to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceFilter:
    """An allow-list of IPv4/IPv6 networks; an empty list allows every source."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        """Parse strictly: "10.1.2.3/8" (host bits set) is a typo we refuse rather than widen."""
        self._networks: tuple[IpNetwork, ...] = tuple(ipaddress.ip_network(cidr) for cidr in cidrs)

    def allows(self, host: str) -> bool:
        """Whether a peer address (as the socket reports it) is inside one of the networks.

        A dual-stack socket bound to "::" reports IPv4 peers as ::ffff:a.b.c.d, and link-local
        IPv6 peers carry a %scope suffix; both are reduced to the address an operator would write.
        """
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
