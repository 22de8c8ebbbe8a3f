"""What egress allows: which names, which resolved addresses, which CONNECT ports."""

from __future__ import annotations

import ipaddress

from sidecar.config import EgressConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressPolicy:
    """Built once from `egress`; pure lookups."""

    def __init__(self, config: EgressConfig) -> None:
        self._exact = frozenset(n for n in config.allow if not n.startswith("*."))
        # "*.example.org" matches a.example.org and a.b.example.org, not example.org.
        self._suffixes = tuple(n[1:] for n in config.allow if n.startswith("*."))
        self._private: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in config.allow_private
        )
        self.connect_ports = frozenset(config.connect_ports)

    def allows(self, name: str) -> bool:
        return name in self._exact or any(name.endswith(s) for s in self._suffixes)

    def refusal(self, address: str) -> str | None:
        """Why a resolved address must not be connected to (None: it may). Anything not
        globally routable is refused (loopback, link-local and cloud metadata, private,
        CGNAT, multicast, reserved) unless inside `allow_private`."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self._private):
            return None
        if ip.is_global:
            return None
        if ip.is_loopback:
            return "loopback"
        if ip.is_link_local:
            return "link-local"
        if ip.is_private:
            return "private"
        return "not globally routable"
