"""Asynchronous DNS for egress names, cached for a fixed time (getaddrinfo reports no TTL),
with concurrent lookups of one name coalesced and failures cached briefly."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.clock import Clock, SystemClock
from sidecar.errors import UpstreamConnectFailure

HostLookup = Callable[[str], Awaitable[list[str]]]

DNS_TTL = 30.0
NEGATIVE_TTL = 5.0
MAX_ENTRIES = 1024


async def system_lookup(name: str) -> list[str]:
    """The system resolver, off the event loop (loop.getaddrinfo runs in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in out:
            out.append(address)
    return out


@dataclass(frozen=True, slots=True)
class _Entry:
    addresses: tuple[str, ...]
    error: str
    expires: float


class DnsCache:
    def __init__(
        self,
        lookup: HostLookup | None = None,
        clock: Clock | None = None,
        ttl: float = DNS_TTL,
        negative_ttl: float = NEGATIVE_TTL,
    ) -> None:
        self._lookup = lookup or system_lookup
        self._clock = clock or SystemClock()
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}

    async def addresses(self, name: str) -> tuple[str, ...]:
        """The addresses `name` resolves to; UpstreamConnectFailure if it doesn't."""
        entry = self._entries.get(name)
        if entry is None or entry.expires <= self._clock.monotonic():
            pending = self._inflight.get(name)
            if pending is None:
                pending = asyncio.ensure_future(self._resolve(name))
                self._inflight[name] = pending
                pending.add_done_callback(lambda _: self._inflight.pop(name, None))
            entry = await asyncio.shield(pending)
        if entry.error:
            raise UpstreamConnectFailure(f"cannot resolve {name!r}: {entry.error}", upstream=name)
        return entry.addresses

    async def _resolve(self, name: str) -> _Entry:
        now = self._clock.monotonic()
        try:
            found = await self._lookup(name)
        except (OSError, UnicodeError) as exc:
            entry = _Entry((), str(getattr(exc, "strerror", None) or exc), now + self._negative_ttl)
        else:
            if found:
                entry = _Entry(tuple(found), "", now + self._ttl)
            else:
                entry = _Entry((), "no addresses", now + self._negative_ttl)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # bounded: names are allow-listed, but *.suffix is open-ended
        self._entries[name] = entry
        return entry
