"""ConsulResolver: endpoint snapshots from Consul's health API via blocking queries.

One watch per upstream name that is configured or actually used (lazy `start_watch`), each a
`GET /v1/health/service/<name>?passing` blocking loop. A return is not a change: only a
different endpoint list is published. Outage vs empty set (docs/discovery.md): on errors the last
known endpoints stay until `stale_after` has passed since Consul started failing, then an empty
set is published (503 no_healthy_endpoints); an empty passing set from Consul is the truth and
is published at once. A catalog watch (`/v1/catalog/services`) tells which names exist, so an
unknown name is `no_route` rather than an empty upstream.

Names come from clients (Host headers), so lazy watches are bounded: at most
`max_lazy_watches` at once (the least recently used one is stopped for a new one), each stopped
after `lazy_ttl` without a request. While the catalog is unknown (not answered yet, or filtered
by ACLs) any valid name gets a watch; one whose first answer is empty is taken as unknown to
Consul: its watch stops and the name is `no_route` for `negative_ttl` without asking again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from sidecar.clock import Clock, SystemClock
from sidecar.config import ConsulConfig
from sidecar.discovery.consul_http import ConsulError, ConsulHttp, ConsulReply
from sidecar.discovery.consul_watch import Backoff, BlockingQuery, TokenBucket, as_list
from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Publish
from sidecar.events import NullObserver, Observer
from sidecar.vocab.endpoint import Endpoint

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SOURCE = "consul"
# Each watch holds one of the Consul client's 100 pooled connections in a blocking query.
MAX_LAZY_WATCHES = 64
LAZY_TTL = 600.0
NEGATIVE_TTL = 30.0
MAX_NEGATIVE = 4096


def endpoint_from_entry(entry: Any) -> Endpoint | None:
    """One `/v1/health/service` entry → Endpoint; empty Service.Address means Node.Address."""
    try:
        service = entry["Service"]
        host = service.get("Address") or entry["Node"]["Address"]
        port = int(service["Port"])
        weights = service.get("Weights") or {}
        weight = max(1, int(weights.get("Passing", 1)))
        tags = tuple(service.get("Tags") or ())
        meta = dict(service.get("Meta") or {})
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not host or not 0 < port < 65536:
        return None
    return Endpoint(host=host, port=port, weight=weight, tags=tags, meta=meta)


def endpoints_from_body(body: Any) -> tuple[Endpoint, ...]:
    found = (endpoint_from_entry(e) for e in as_list(body))
    return tuple(sorted((e for e in found if e is not None), key=lambda e: (e.host, e.port)))


def _identity(eps: tuple[Endpoint, ...]) -> tuple[Any, ...]:
    # Endpoint equality ignores meta; a meta change is still a change for us.
    return tuple((e, tuple(sorted(e.meta.items()))) for e in eps)


class _Forgotten(Exception):
    """Ends a watch from inside its own reply callback."""


class _ServiceWatch:
    """State of one upstream's watch: last published endpoints and the staleness clock."""

    def __init__(self, resolver: ConsulResolver, name: str) -> None:
        self.name = name
        self._r = resolver
        self.synced = asyncio.Event()
        self._published: tuple[Any, ...] | None = None
        self._known = 0  # endpoints in the last snapshot from Consul
        # Start of the current outage: a blocking query that hangs for `wait` is Consul
        # working, so staleness counts from the first failure, not from the last answer.
        self._failing_since: float | None = None
        self._stale = False
        self._backoff = Backoff(resolver.backoff_base, resolver.backoff_max)
        self._warned_acl = False
        self._query: BlockingQuery | None = None

    async def run(self) -> None:
        self._query = query = BlockingQuery(
            self._r.http,
            f"/v1/health/service/{quote(self.name, safe='')}",
            {"passing": "1"},
            wait=self._r.config.wait,
            bucket=TokenBucket(self._r.rate, self._r.burst, self._r.clock),
        )
        with contextlib.suppress(_Forgotten):
            await query.run(self.on_reply, self.on_error)

    def on_reply(self, reply: ConsulReply) -> None:
        failing_since, self._failing_since = self._failing_since, None
        self._backoff.reset()
        endpoints = endpoints_from_body(reply.body)
        if reply.filtered_by_acls and not endpoints and not self._warned_acl:
            self._warned_acl = True
            log.warning(
                "consul: results for %s were filtered by ACLs (does the token have service:read?)",
                self.name,
            )
        if failing_since is not None:
            # One line per outage: its start was logged once, this closes it.
            log.warning(
                "consul watch %s: Consul answers again after %.0fs, %d endpoints",
                self.name,
                self._r.clock.monotonic() - failing_since,
                len(endpoints),
            )
        self._stale = False
        self._known = len(endpoints)
        if not endpoints and self._published is None and self._r.unknown(self.name):
            self._r.forget(self.name)  # not in Consul as far as we can see: no_route
            raise _Forgotten  # ends this watch's loop before it asks again
        self._emit(endpoints)
        self.synced.set()

    async def on_error(self, exc: ConsulError) -> float:
        self._r.observer.discovery_error(SOURCE)
        now = self._r.clock.monotonic()
        # Only the first error of an outage is a warning; retries log at debug level.
        first = self._failing_since is None
        if self._failing_since is None:
            self._failing_since = now
        stale_at = self._failing_since + self._r.config.stale_after
        delay = self._backoff.next()
        if self._published is None:
            # Never heard from Consul about this name: it exists but has nothing to route to.
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "consul watch %s: %s (no endpoints known yet; retrying)",
                self.name,
                exc,
            )
            self._emit(())
        elif self._stale:
            log.debug("consul watch %s: %s", self.name, exc)
        elif now >= stale_at:
            self._stale = True
            if self._query is not None:
                # What we publish no longer matches the index: ask without blocking next time,
                # or a recovered Consul would hold us for `wait` before we republish.
                self._query.index = 0
            log.error(
                "consul watch %s: %s; endpoints older than stale_after=%gs, withdrawing "
                "%d endpoints",
                self.name,
                exc,
                self._r.config.stale_after,
                self._known,
            )
            self._emit(())
        else:
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "consul watch %s: %s (keeping %d last known endpoints for %.0fs more)",
                self.name,
                exc,
                self._known,
                stale_at - now,
            )
            delay = min(delay, max(stale_at - now, 0.0))
        return delay

    def _emit(self, endpoints: tuple[Endpoint, ...]) -> None:
        ident = _identity(endpoints)
        if ident == self._published:
            return  # a return is not a change
        self._published = ident
        stamp = self._r.wall()
        self._r.publish(EndpointSet(self.name, endpoints, SOURCE, stamp))
        self._r.observer.discovery_update(self.name, SOURCE, stamp)


class ConsulResolver:
    source = SOURCE

    def __init__(
        self,
        config: ConsulConfig,
        http: ConsulHttp,
        *,
        names: Iterable[str] = (),
        observer: Observer | None = None,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
        rate: float = 1.0,
        burst: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        watch_catalog: bool = True,
        max_lazy_watches: int = MAX_LAZY_WATCHES,
        lazy_ttl: float = LAZY_TTL,
        negative_ttl: float = NEGATIVE_TTL,
    ) -> None:
        """`names`: configured upstream names, watched from the start. `rate`/`burst`: token
        bucket per watch (requests/s). `clock` drives staleness and expiry, `wall` the
        snapshot stamps. `max_lazy_watches`, `lazy_ttl`, `negative_ttl`: the bounds on names
        that are not configured (see the module docstring)."""
        self.config = config
        self.http = http
        self.observer: Observer = observer or NullObserver()
        self.clock: Clock = clock or SystemClock()
        self.wall = wall
        self.rate = rate
        self.burst = burst
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._configured = frozenset(names)
        self._watch_catalog = watch_catalog
        self._catalog: frozenset[str] | None = None  # None: not known (yet), be permissive
        self._watches: dict[str, _ServiceWatch] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._publish: Publish | None = None
        self._max_lazy = max_lazy_watches
        self._lazy_ttl = lazy_ttl
        self._negative_ttl = negative_ttl
        # Watched names that are not configured → last time a request used them (LRU order).
        self._lazy: OrderedDict[str, float] = OrderedDict()
        # Names Consul does not know → until when we keep saying so.
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._withdraw: Callable[[str, str], None] | None = None
        self._take_used: Callable[[], set[str]] | None = None
        for name in self._configured:
            self.start_watch(name)  # spawned by run(); visible to pending_sync() at once

    # ------------------------------------------------------------------ Resolver protocol

    def static_names(self) -> frozenset[str]:
        return self._configured

    def can_resolve(self, name: str) -> bool:
        if not _NAME.match(name):
            return False
        if name in self._configured or name in self._watches:
            return True
        if self._is_negative(name):
            return False
        return self._catalog is None or name in self._catalog

    def start_watch(self, name: str) -> None:
        if name in self._watches or not _NAME.match(name):
            return
        if name not in self._configured:
            if self._is_negative(name):
                return
            if len(self._lazy) >= self._max_lazy:
                self._note_use()
                while len(self._lazy) >= self._max_lazy:
                    oldest = next(iter(self._lazy))
                    log.debug("consul: %d lazy watches, stopping %s", len(self._lazy), oldest)
                    self._stop(oldest)
            self._lazy[name] = self.clock.monotonic()
        self._watches[name] = _ServiceWatch(self, name)
        if self._publish is not None:
            self._spawn(name)

    def use_directory(
        self, withdraw: Callable[[str, str], None], take_used: Callable[[], set[str]]
    ) -> None:
        """How to take back a stopped watch's snapshot, and which names are in use."""
        self._withdraw = withdraw
        self._take_used = take_used

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        for name in self._configured:
            self.start_watch(name)
        for name in list(self._watches):
            self._spawn(name)
        if self._watch_catalog:
            self._tasks["\0catalog"] = asyncio.create_task(
                self._catalog_loop(), name="consul-catalog"
            )
        self._tasks["\0expiry"] = asyncio.create_task(self._expiry_loop(), name="consul-expiry")
        try:
            await asyncio.Event().wait()
        finally:
            tasks = list(self._tasks.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            self._publish = None

    # ------------------------------------------------------------------ lifecycle helpers

    def set_names(self, names: Iterable[str]) -> None:
        """After a config reload: watch newly configured names. Watches of names no longer
        configured keep running (they may be in use); they cost one idle request per `wait`."""
        self._configured = frozenset(names)
        for name in self._configured:
            self.start_watch(name)

    def pending_sync(self) -> list[str]:
        """Configured names without a first answer from Consul yet (for /readyz)."""
        return sorted(
            n
            for n in self._configured
            if n in self._watches and not self._watches[n].synced.is_set()
        )

    async def wait_synced(self, within: float) -> bool:
        """Wait (bounded) until every configured name has had a first answer."""
        waits = [
            asyncio.ensure_future(self._watches[n].synced.wait())
            for n in self._configured
            if n in self._watches
        ]
        if not waits:
            return True
        try:
            _, pending = await asyncio.wait(waits, timeout=within)
        finally:
            for w in waits:
                w.cancel()  # also when we are cancelled: no orphaned waiters
        return not pending

    def watched(self) -> list[str]:
        return sorted(self._watches)

    def negative(self) -> list[str]:
        """Names currently cached as unknown to Consul."""
        return sorted(self._negative)

    def unknown(self, name: str) -> bool:
        """Whether an empty answer for `name` means Consul does not know it: it is not
        configured and the catalog does not list it (or cannot be read)."""
        if name in self._configured:
            return False
        return self._catalog is None or name not in self._catalog

    def forget(self, name: str) -> None:
        """`name` is unknown to Consul: stop watching it and say so for `negative_ttl`."""
        self._stop(name)
        self._negative[name] = self.clock.monotonic() + self._negative_ttl
        self._negative.move_to_end(name)
        while len(self._negative) > MAX_NEGATIVE:
            self._negative.popitem(last=False)

    def expire(self) -> None:
        """Stop lazy watches unused for `lazy_ttl`; drop expired negative entries."""
        now = self._note_use()
        for name, last in list(self._lazy.items()):
            if now - last >= self._lazy_ttl:
                log.debug("consul: %s unused for %gs, stopping its watch", name, self._lazy_ttl)
                self._stop(name)
        for name, until in list(self._negative.items()):
            if until <= now:
                del self._negative[name]

    # ------------------------------------------------------------------ internals

    def publish(self, snapshot: EndpointSet) -> None:
        if self._publish is not None:
            self._publish(snapshot)

    def _is_negative(self, name: str) -> bool:
        until = self._negative.get(name)
        if until is None:
            return False
        if self.clock.monotonic() < until:
            return True
        del self._negative[name]
        return False

    def _note_use(self) -> float:
        """Refresh the lazy names' last use from the directory; now."""
        now = self.clock.monotonic()
        if self._take_used is not None:
            for name in self._take_used():
                if name in self._lazy:
                    self._lazy[name] = now
                    self._lazy.move_to_end(name)
        return now

    def _stop(self, name: str) -> None:
        self._lazy.pop(name, None)
        if self._watches.pop(name, None) is None:
            return
        task = self._tasks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._withdraw is not None:
            self._withdraw(SOURCE, name)

    async def _expiry_loop(self) -> None:
        period = max(1.0, min(self._lazy_ttl, self._negative_ttl) / 4)
        while True:
            await asyncio.sleep(period)
            self.expire()

    def _spawn(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(
                self._watches[name].run(), name=f"consul-watch-{name}"
            )

    async def _catalog_loop(self) -> None:
        query = BlockingQuery(
            self.http,
            "/v1/catalog/services",
            {},
            wait=self.config.wait,
            bucket=TokenBucket(self.rate, self.burst, self.clock),
        )
        backoff = Backoff(self.backoff_base, self.backoff_max)

        def on_reply(reply: ConsulReply) -> None:
            backoff.reset()
            body = reply.body if isinstance(reply.body, dict) else {}
            # Filtered by ACLs: we cannot tell which names exist, so stay permissive.
            self._catalog = None if reply.filtered_by_acls else frozenset(body)

        async def on_error(exc: ConsulError) -> float:
            self.observer.discovery_error(SOURCE)
            log.debug("consul catalog watch: %s", exc)
            return backoff.next()

        await query.run(on_reply, on_error)
