"""Concurrency limit / load shedding per upstream (what Envoy calls a "circuit breaker":
max_requests on a cluster). Over the limit → 503 overloaded with retry-after, at once.

A request counts from entry until its response headers arrive (or it fails); its body may
still be streaming after that. Counting to the end of the body would need a hook in the
transport; the header-time count already bounds the work queued on the upstream."""

from __future__ import annotations

from sidecar.errors import Overloaded
from sidecar.events import NullObserver, Observer
from sidecar.http import Request, Response
from sidecar.stack import Handler

RETRY_AFTER_S = 1.0


class ConcurrencyLimitLayer:
    __slots__ = ("_inflight", "_limit", "_observer", "_upstream")

    def __init__(
        self, upstream: str, max_concurrent_requests: int, observer: Observer | None = None
    ) -> None:
        self._upstream = upstream
        self._limit = max_concurrent_requests
        self._observer: Observer = observer or NullObserver()
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    def wrap(self, inner: Handler) -> Handler:
        limit, observer, upstream = self._limit, self._observer, self._upstream

        async def concurrency_limit(request: Request) -> Response:
            if self._inflight >= limit:
                observer.rejected(upstream, "overloaded")
                raise Overloaded(
                    f"{upstream!r} already has {limit} requests in flight",
                    upstream=upstream,
                    retry_after=RETRY_AFTER_S,
                )
            self._inflight += 1
            try:
                return await inner(request)
            finally:
                self._inflight -= 1

        return concurrency_limit
