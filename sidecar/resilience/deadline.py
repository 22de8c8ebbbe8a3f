"""Deadlines: one absolute time budget per request, propagated across hops.

`request.deadline` = min(now + timeouts.total, now + the caller's `x-sidecar-expected-timeout-ms`).
Every forwarded attempt carries the budget still left (`stamp_remaining`), so the next hop caps
its own total by ours (Linkerd/gRPC-style deadline propagation).

When the budget runs out:
- before we called anything (the caller sent 0 ms or a budget already spent) → DeadlineExceeded,
  the upstream is never called;
- while waiting → UpstreamTimeout (504 upstream_timeout) if our own `timeouts.total` was the
  tighter limit, DeadlineExceeded (504 deadline_exceeded) if the caller's budget was: the code
  then says whose clock ran out."""

from __future__ import annotations

import asyncio

from sidecar.clock import Clock
from sidecar.errors import DeadlineExceeded, UpstreamTimeout
from sidecar.events import NullObserver, Observer
from sidecar.http import Request, Response
from sidecar.resilience.expiry import Expiry, LoopRef
from sidecar.stack import Handler

EXPECTED_TIMEOUT_HEADER = "x-sidecar-expected-timeout-ms"
# Larger values than a day are certainly bogus; treat them as "no caller deadline".
_MAX_BUDGET_MS = 86_400_000
# Timers may fire a hair early; within this, a timeout at the deadline counts as the deadline.
_SLACK = 0.001


def caller_budget(request: Request) -> float | None:
    """The caller's remaining budget in seconds, or None when absent or unparsable (a broken
    header must not fail the request)."""
    raw = request.headers.get(EXPECTED_TIMEOUT_HEADER)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit():
        return None
    ms = int(raw)
    if ms > _MAX_BUDGET_MS:
        return None
    return ms / 1000.0


def remaining(request: Request, now: float) -> float | None:
    return None if request.deadline is None else request.deadline - now


def stamp_remaining(request: Request, now: float) -> None:
    """Set `x-sidecar-expected-timeout-ms` to the budget left (integer ms, floored, ≥ 0).
    Called for every attempt, so a retry forwards what is left, not what was."""
    if request.deadline is None:
        return
    ms = max(0, int((request.deadline - now) * 1000))
    request.headers.set(EXPECTED_TIMEOUT_HEADER, str(ms))


class DeadlineLayer:
    """Sets `request.deadline`, refuses already-spent budgets, and enforces the total timeout
    around everything inside it (breaker, retries with their backoff, balancer, upstream)."""

    __slots__ = ("_clock", "_observer", "_total")

    def __init__(self, total: float, clock: Clock, observer: Observer | None = None) -> None:
        self._total = total
        self._clock = clock
        self._observer: Observer = observer or NullObserver()

    def wrap(self, inner: Handler) -> Handler:
        total, clock, observer = self._total, self._clock, self._observer
        loop = LoopRef()

        async def deadline(request: Request) -> Response:
            now = clock.monotonic()
            own = now + total
            budget = caller_budget(request)
            callers = None if budget is None else now + budget
            if request.deadline is not None and (callers is None or request.deadline < callers):
                callers = request.deadline  # an outer layer already set a tighter deadline
            if budget is not None and budget <= 0:
                observer.rejected(request.upstream, "deadline_exceeded")
                raise DeadlineExceeded(
                    "the caller's deadline was already spent", upstream=request.upstream
                )
            caller_bound = callers is not None and callers < own
            request.deadline = callers if callers is not None and caller_bound else own
            stamp_remaining(request, now)
            expiry = Expiry(loop.timers(), request.deadline - now)
            try:
                response = await inner(request)
            except asyncio.CancelledError:
                if not expiry.close():
                    raise
                exc: BaseException | None = None  # our own total timer fired
            except TimeoutError as err:
                expiry.close()
                exc = err
            except UpstreamTimeout as err:
                expiry.close()
                # The retry layer caps each try at the deadline, so its timeout may be the one
                # that fires when the caller's budget runs out: report whose budget it was.
                if caller_bound and clock.monotonic() >= request.deadline - _SLACK:
                    raise DeadlineExceeded(
                        "the caller's deadline expired waiting for the upstream",
                        upstream=request.upstream,
                    ) from err
                raise
            except BaseException:
                expiry.close()
                raise
            else:
                expiry.close()
                return response
            if caller_bound:
                raise DeadlineExceeded(
                    "the caller's deadline expired waiting for the upstream",
                    upstream=request.upstream,
                ) from exc
            raise UpstreamTimeout(
                f"no response within the total timeout of {total:g}s",
                upstream=request.upstream,
            ) from exc

        return deadline
