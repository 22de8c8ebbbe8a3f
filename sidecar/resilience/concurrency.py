"""Concurrency limit / load shedding per upstream (what Envoy calls a "circuit breaker":
max_requests on a cluster). Over the limit → 503 overloaded with retry-after, at once.

A request counts from entry until its response headers arrive (or it fails); its body may
still be streaming after that. Counting to the end of the body would need a hook in the
transport; the header-time count already bounds the work queued on the upstream."""

from __future__ import annotations

from sidecar.errors import Overloaded
from sidecar.events import NullObserver, Observer
from sidecar.http import Response
from sidecar.stack import Exchange, Filter, Handler, alone

RETRY_AFTER_S = 1.0


class ConcurrencyLimitLayer(Filter):
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

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        if self._inflight >= self._limit:
            self._observer.rejected(self._upstream, "overloaded")
            raise Overloaded(
                f"{self._upstream!r} already has {self._limit} requests in flight",
                upstream=self._upstream,
                retry_after=RETRY_AFTER_S,
            )
        self._inflight += 1
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        self._inflight -= 1
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        self._inflight -= 1
        return None

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)
