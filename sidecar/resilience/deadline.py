"""Deadlines: one budget for the whole exchange, propagated to the next hop.

The budget is `timeouts.total`, capped by the caller's `x-sidecar-expected-timeout-ms`. A
request whose caller has already given up is answered 504 `deadline_exceeded` without touching
the upstream. Each attempt forwards the *remaining* budget, so the next sidecar caps its own."""

from __future__ import annotations

import asyncio

from sidecar.clock import Clock
from sidecar.errors import DeadlineExceeded, UpstreamTimeout
from sidecar.http import Request, Response
from sidecar.stack import Handler

HEADER = "x-sidecar-expected-timeout-ms"


def incoming_budget(request: Request) -> float | None:
    value = request.headers.get(HEADER)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    return max(ms, 0.0) / 1000.0


def stamp_remaining(request: Request, now: float) -> None:
    """Set the header to what is left of the deadline (whole ms, at least 1 while time remains)."""
    if request.deadline is not None:
        remaining_ms = int((request.deadline - now) * 1000)
        request.headers.set(HEADER, str(max(remaining_ms, 0)))


class DeadlineLayer:
    def __init__(self, total: float, clock: Clock) -> None:
        self._total = total
        self._clock = clock

    def wrap(self, inner: Handler) -> Handler:
        total, clock = self._total, self._clock

        async def deadline(request: Request) -> Response:
            now = clock.monotonic()
            start = request.start or now
            budget = total
            caller = incoming_budget(request)
            from_caller = caller is not None and caller < total
            if caller is not None and from_caller:
                budget = caller
            request.deadline = start + budget
            remaining = request.deadline - now
            if remaining <= 0:
                raise DeadlineExceeded(
                    "the caller's deadline was already spent", upstream=request.upstream
                )
            stamp_remaining(request, now)
            try:
                async with asyncio.timeout(remaining):
                    return await inner(request)
            except TimeoutError:
                if from_caller:
                    raise DeadlineExceeded(
                        f"the caller's deadline ({budget * 1000:.0f} ms) expired",
                        upstream=request.upstream,
                    ) from None
                raise UpstreamTimeout(
                    f"no response within the total timeout ({total:g}s)", upstream=request.upstream
                ) from None

        return deadline
