"""The Resolver seam and the Directory the data path reads.

A resolver publishes complete snapshots (`EndpointSet`) for upstream names — discovery as a
stream of updates, as in linkerd2-proxy. The Directory keeps the latest snapshot per name and
tells subscribers (clusters) when one changes. Reading it on the hot path is a dict lookup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from sidecar.discovery.endpoints import EndpointSet

log = logging.getLogger(__name__)

Publish = Callable[[EndpointSet], None]


class Resolver(Protocol):
    source: str

    def static_names(self) -> frozenset[str]:
        """Names known without asking anyone (configured); may change after a reload."""
        ...

    async def run(self, publish: Publish) -> None:
        """Publish snapshots until cancelled. Must not raise on transient errors."""
        ...

    def can_resolve(self, name: str) -> bool:
        """True if this resolver may know `name` (e.g. Consul: any valid service name)."""
        ...

    def start_watch(self, name: str) -> None:
        """Begin watching a name discovered at request time (lazy watches)."""
        ...


class Directory:
    """Latest endpoint snapshot per upstream name, merged over resolvers in priority order
    (earlier resolvers win for a name they publish)."""

    def __init__(self, resolvers: Sequence[Resolver]) -> None:
        self._resolvers = list(resolvers)
        self._priority = {r.source: i for i, r in enumerate(self._resolvers)}
        self._by_source: dict[str, dict[str, EndpointSet]] = {r.source: {} for r in resolvers}
        self._current: dict[str, EndpointSet] = {}
        self._subscribers: list[Callable[[EndpointSet], None]] = []
        self._gone: list[Callable[[str, str], None]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Names with a snapshot the data path looked up since the last `take_used` (lazy
        # watches expire when unused).
        self._used: set[str] = set()

    @property
    def resolvers(self) -> list[Resolver]:
        return self._resolvers

    def subscribe(self, callback: Callable[[EndpointSet], None]) -> None:
        self._subscribers.append(callback)

    def subscribe_gone(self, callback: Callable[[str, str], None]) -> None:
        """`callback(source, name)` when a withdrawal leaves a known name with no source: no
        snapshot replaces the last one, so `subscribe`'s callbacks don't hear of it."""
        self._gone.append(callback)

    def publish(self, snapshot: EndpointSet) -> None:
        self._by_source.setdefault(snapshot.source, {})[snapshot.upstream] = snapshot
        best = self._best(snapshot.upstream)
        if best is None:
            return
        previous = self._current.get(snapshot.upstream)
        self._current[snapshot.upstream] = best
        for fut in self._waiters.pop(snapshot.upstream, []):
            if not fut.done():
                fut.set_result(None)
        if previous is None or previous.endpoints != best.endpoints or previous is not best:
            for cb in self._subscribers:
                cb(best)

    def withdraw(self, source: str, name: str) -> None:
        """A resolver no longer knows `name` (e.g. removed from the file)."""
        self._by_source.get(source, {}).pop(name, None)
        best = self._best(name)
        if best is None:
            known = self._current.pop(name, None) is not None
            # Someone waiting for this name's first snapshot gets the answer now: none.
            for fut in self._waiters.pop(name, []):
                if not fut.done():
                    fut.set_result(None)
            if known:
                for gone in self._gone:
                    gone(source, name)
        else:
            self._current[name] = best
            for cb in self._subscribers:
                cb(best)

    def _best(self, name: str) -> EndpointSet | None:
        for r in self._resolvers:
            snap = self._by_source.get(r.source, {}).get(name)
            if snap is not None:
                return snap
        return None

    def get(self, name: str) -> EndpointSet | None:
        return self._current.get(name)

    def lookup(self, name: str) -> EndpointSet | None:
        """`get` for the data path: also notes that `name` is in use (only names with a
        snapshot, so made-up names never fill the set)."""
        snap = self._current.get(name)
        if snap is not None:
            self._used.add(name)
        return snap

    def take_used(self) -> set[str]:
        """Names looked up since the last call."""
        used, self._used = self._used, set()
        return used

    def names(self) -> list[str]:
        return sorted(self._current)

    def is_routable(self, name: str) -> bool:
        if name in self._current:
            return True
        return any(name in r.static_names() or r.can_resolve(name) for r in self._resolvers)

    async def resolve(self, name: str, timeout: float) -> EndpointSet | None:
        """Snapshot for `name`, starting a lazy watch and waiting (bounded) for its first
        result when no resolver has published it yet. None: nobody knows the name."""
        snap = self._current.get(name)
        if snap is not None:
            return snap
        candidates = [r for r in self._resolvers if r.can_resolve(name)]
        if not candidates:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(fut)
        for r in candidates:
            r.start_watch(name)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            waiters = self._waiters.get(name, [])
            if fut in waiters:
                waiters.remove(fut)
        return self._current.get(name)

    def start(self) -> None:
        for r in self._resolvers:
            self._tasks.append(
                asyncio.create_task(r.run(self.publish), name=f"resolver-{r.source}")
            )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("resolver task failed")
        self._tasks.clear()
