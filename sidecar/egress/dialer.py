"""Opens the TCP connection to an egress name: resolved, every address checked at every
connect (so a DNS answer that changes to a private address is caught: the check is on the
addresses actually dialled, not on an earlier lookup), and the next permitted address tried
when one refuses or does not answer, all within the upstream's connect timeout."""

from __future__ import annotations

import asyncio
import socket

from sidecar.egress.dns import DnsCache
from sidecar.egress.policy import EgressPolicy
from sidecar.errors import UpstreamConnectFailure


def attempt_share(left: float, remaining_addresses: int) -> float:
    """The time one connect attempt gets out of what is `left` of the connect timeout: half
    of it while other addresses follow (curl's rule: a slow but live first address still gets
    a fair chance, and a refusal, which is quick, hands its unused time on), all of it for the
    last address."""
    return left if remaining_addresses <= 1 else left / 2


class EgressDialer:
    def __init__(self, policy: EgressPolicy, dns: DnsCache) -> None:
        self.policy = policy  # replaced whole on reload
        self._dns = dns

    async def permitted(self, name: str) -> tuple[str, ...]:
        """The addresses of `name` egress may connect to, in DNS order (the resolver's RFC
        6724 sort); UpstreamConnectFailure naming the refused ones when there is none."""
        addresses = await self._dns.addresses(name)
        allowed: list[str] = []
        refused: list[str] = []
        for address in addresses:
            reason = self.policy.refusal(address)
            if reason is None:
                allowed.append(address)
            else:
                refused.append(f"{address} ({reason})")
        if allowed:
            return tuple(allowed)
        raise UpstreamConnectFailure(
            f"{name!r} resolved to {', '.join(refused)}, which egress does not connect to; "
            "if intended, list the range in egress.allow_private",
            upstream=name,
        )

    async def __call__(self, name: str, port: int, connect_timeout: float) -> socket.socket:
        """A connected socket to the first permitted address of `name` that answers. Only a
        TCP connect moves on to the next address (nothing has been sent yet); TLS, if any, is
        the caller's, on the socket returned. Raises the last attempt's error (TimeoutError
        or OSError) when none answers in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout  # DNS time counts against the budget too
        addresses = await self.permitted(name)
        last: OSError = TimeoutError()
        for i, address in enumerate(addresses):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                return await _connect(address, port, attempt_share(left, len(addresses) - i))
            except OSError as exc:  # TimeoutError included
                last = exc
        raise last


async def _connect(address: str, port: int, timeout: float) -> socket.socket:
    # A numeric host: getaddrinfo does no lookup, and gives the sockaddr (with an IPv6 scope).
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock
