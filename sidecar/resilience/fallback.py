"""Fallback: answer for the upstream when it can't (breaker open, nothing healthy) — the
opossum-style "cached fallback while the circuit is open".

`static` serves a configured reply; `last_good` serves the last 2xx response to the same GET,
bounded by entries, bytes and age. Replies are marked `x-sidecar-fallback`, keep the
`x-sidecar-error` code that triggered them, and are counted."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.config import FallbackConfig
from sidecar.errors import SidecarError
from sidecar.events import Observer
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.stack import Handler


@dataclass(slots=True)
class _Entry:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float


class LastGoodCache:
    """LRU of recent good GET replies, bounded by count, total bytes and age."""

    def __init__(self, max_entries: int, max_bytes: int, max_age: float, clock: Clock) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def fits(self, size: int) -> bool:
        return size <= self._max_bytes

    def put(self, key: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old.body)
        self._entries[key] = _Entry(status, headers, body, self._clock.monotonic())
        self.bytes += len(body)
        while self._entries and (
            len(self._entries) > self._max_entries or self.bytes > self._max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.body)

    def get(self, key: str) -> tuple[_Entry, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock.monotonic() - entry.stored_at
        if age > self._max_age:
            del self._entries[key]
            self.bytes -= len(entry.body)
            return None
        self._entries.move_to_end(key)
        return entry, age


class FallbackLayer:
    def __init__(self, config: FallbackConfig, clock: Clock, observer: Observer) -> None:
        self._on = frozenset(config.on)
        self._static = config.static
        lg = config.last_good
        self.cache = (
            LastGoodCache(lg.max_entries, lg.max_bytes, lg.max_age, clock) if lg.enabled else None
        )
        self._observer = observer

    def wrap(self, inner: Handler) -> Handler:
        cache, static, on, observer = self.cache, self._static, self._on, self._observer

        async def fallback(request: Request) -> Response:
            key = f"{request.authority}{request.target}" if request.method == "GET" else ""
            try:
                response = await inner(request)
            except SidecarError as err:
                if err.code not in on:
                    raise
                if cache is not None and key:
                    hit = cache.get(key)
                    if hit is not None:
                        entry, age = hit
                        headers = Headers.from_lower(list(entry.headers))
                        headers.set("x-sidecar-fallback", "last_good")
                        headers.set("x-sidecar-error", err.code)
                        headers.set("age", str(int(age)))
                        observer.fallback(request.upstream, "last_good", err.code)
                        return Response(entry.status, headers, BytesBody(entry.body))
                if static is not None:
                    headers = Headers(static.headers.items())
                    headers.set("x-sidecar-fallback", "static")
                    headers.set("x-sidecar-error", err.code)
                    observer.fallback(request.upstream, "static", err.code)
                    return Response(static.status, headers, BytesBody(static.body.encode()))
                raise
            if cache is not None and key and 200 <= response.status < 300:
                length = response.body.length
                if length is not None and cache.fits(length):
                    # Small and bounded: read it once, remember it, replay it to the client.
                    data = b"".join([c async for c in response.body])
                    cache.put(key, response.status, response.headers.items(), data)
                    response = Response(response.status, response.headers, BytesBody(data))
            return response

        return fallback
