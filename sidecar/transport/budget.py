"""One listener's connection budget.

Each listener has its own (`limits.max_connections`, or the listener's override), so clients
of the public inbound listener can never use up the local app's outbound connections. Idle
connections (keep-alive between requests, or accepted with nothing received yet) are kept
in the order they became idle; when the budget is full, a newcomer closes the connection idle
longest instead of being refused. Only when none is idle is the newcomer refused."""

from __future__ import annotations

from typing import Protocol


class Evictable(Protocol):
    def evict(self) -> None:
        """Close quietly: the budget needs the slot (the connection is idle)."""


class ConnectionBudget:
    __slots__ = ("_idle", "_members", "evicted", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._members: set[Evictable] = set()
        # A dict keeps insertion order: its first key is the connection idle longest.
        self._idle: dict[Evictable, None] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._members)

    def admit(self, conn: Evictable) -> bool:
        """Take a slot for `conn`, closing the oldest idle connection if the budget is full;
        False when every slot is busy (the caller refuses `conn`)."""
        if len(self._members) >= self.limit:
            if not self._idle:
                return False
            oldest = next(iter(self._idle))
            self.release(oldest)
            self.evicted += 1
            oldest.evict()
        self._members.add(conn)
        self._idle[conn] = None
        return True

    def release(self, conn: Evictable) -> None:
        self._members.discard(conn)
        self._idle.pop(conn, None)

    def idle(self, conn: Evictable) -> None:
        """`conn` waits for its next request: it may be evicted from now on."""
        if conn in self._members:
            self._idle[conn] = None

    def busy(self, conn: Evictable) -> None:
        """A request started arriving on `conn`: never evict it now."""
        self._idle.pop(conn, None)
