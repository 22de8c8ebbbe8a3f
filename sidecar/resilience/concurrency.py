"""Concurrency limit / load shedding per upstream (what Envoy calls "circuit breakers":
max_requests). Over the limit → 503 `overloaded` at once, with `retry-after`. A request
counts until its response headers arrive."""

from __future__ import annotations

from sidecar.errors import Overloaded
from sidecar.http import Request, Response
from sidecar.stack import Handler


class ConcurrencyLimitLayer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def wrap(self, inner: Handler) -> Handler:
        async def limited(request: Request) -> Response:
            if self.inflight >= self.limit:
                raise Overloaded(
                    f"more than {self.limit} concurrent requests to {request.upstream!r}",
                    upstream=request.upstream,
                    retry_after=1.0,
                )
            self.inflight += 1
            try:
                return await inner(request)
            finally:
                self.inflight -= 1

        return limited
