"""Turns an egress name into the address to connect to, checked at every connect (so a DNS
answer that changes to a private address is caught: the check is on the address actually
dialled, not on an earlier lookup)."""

from __future__ import annotations

from sidecar.egress.dns import DnsCache
from sidecar.egress.policy import EgressPolicy
from sidecar.errors import UpstreamConnectFailure


class EgressDialer:
    def __init__(self, policy: EgressPolicy, dns: DnsCache) -> None:
        self._policy = policy
        self._dns = dns

    async def __call__(self, name: str) -> str:
        addresses = await self._dns.addresses(name)
        refused: list[str] = []
        for address in addresses:
            reason = self._policy.refusal(address)
            if reason is None:
                return address
            refused.append(f"{address} ({reason})")
        raise UpstreamConnectFailure(
            f"{name!r} resolved to {', '.join(refused)}, which egress does not connect to; "
            "if intended, list the range in egress.allow_private",
            upstream=name,
        )
