"""Deadlines: one absolute time budget per request, propagated across hops.

`request.deadline` = min(now + timeouts.total, now + the caller's `x-sidecar-expected-timeout-ms`).
Every forwarded attempt carries the budget still left (`stamp_remaining`), so the next hop caps
its own total by ours (Linkerd/gRPC-style deadline propagation).

When the budget runs out:
- before we called anything (the caller sent 0 ms or a budget already spent) → DeadlineExceeded,
  the upstream is never called;
- while waiting → UpstreamTimeout (504 upstream_timeout) if our own `timeouts.total` was the
  tighter limit, DeadlineExceeded (504 deadline_exceeded) if the caller's budget was: the code
  then says whose clock ran out.

A slow client is not a slow upstream (Envoy starts its route timeout at the end of the request
for the same reason): our own total starts when the request has been fully received. The body
streams while it arrives, so the timer is armed at the head and, when it comes due, moved by
the time the body took to arrive. A client that has not finished sending its body within
`timeouts.total` of its head gets 408 `bad_request`: raised here, above the breaker, retries
and balancer, which see only a cancelled try and count nothing against the upstream. Time the
body spends held back because the upstream does not read it stays the upstream's."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from sidecar.clock import Clock
from sidecar.errors import BadRequest, DeadlineExceeded, UpstreamTimeout
from sidecar.events import NullObserver, Observer
from sidecar.http import Body, BytesBody, Request, Response
from sidecar.resilience.expiry import Expiry, Hold, LoopRef, TimerQueue
from sidecar.stack import Exchange, Filter, Handler, alone
from sidecar.transport.body import StreamBody
from sidecar.transport.h2_body import H2Body  # (small: not the HTTP/2 stack itself)
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER

# Larger values than a day are certainly bogus; treat them as "no caller deadline".
_MAX_BUDGET_MS = 86_400_000
# Timers may fire a hair early; within this, a timeout at the deadline counts as the deadline.
_SLACK = 0.001


class ArrivingBody(Protocol):
    """A request body read from the client while it arrives (an HTTP/1.1 `StreamBody`, an
    HTTP/2 stream's `H2Body`): what the timers need to tell the client's time from the
    upstream's."""

    @property
    def received_at(self) -> float:
        """time.monotonic() when the last byte arrived; 0.0 while it is still arriving."""
        ...

    @property
    def error(self) -> BaseException | None: ...

    @property
    def throttled(self) -> bool:
        """True while the client waits on us (we have not read what it sent)."""
        ...


def arriving(body: Body) -> ArrivingBody | None:
    """The request body if the client is still sending it, else None (the common case: the
    whole request came in one read)."""
    if isinstance(body, BytesBody):
        return None
    # The client's stream itself, or the one a replay wrapper reads from (`source`). (A tuple,
    # not `StreamBody | H2Body`: mypyc turns it into two type checks, a union is built per call.)
    stream = body if isinstance(body, (StreamBody, H2Body)) else getattr(body, "source", None)
    if (
        isinstance(stream, (StreamBody, H2Body))
        and stream.received_at == 0.0
        and stream.error is None
    ):
        return stream
    return None


class TryHold(Hold):
    """A per-try (or total) timer of a try whose request body was still arriving: due
    `timeout` after the body was complete, not after the try began. While the client is
    still sending, the timer is looked at again every `timeout`; while the body is held back
    because the upstream does not read it, the time counts (it is the upstream's)."""

    __slots__ = ("_body", "_timeout")

    def __init__(self, body: ArrivingBody, timeout: float) -> None:
        self._body = body
        self._timeout = timeout

    def postpone(self) -> float:
        body = self._body
        if body.received_at == 0.0:
            return 0.0 if body.throttled or body.error is not None else self._timeout
        later = body.received_at + self._timeout - time.monotonic()
        return later if later > _SLACK else 0.0


class _TotalHold(Hold):
    """The total timer of a request whose body was still arriving at its head. Due: `total`
    after the body was complete (the deadline moves by the arrival time), or at once with a
    408 verdict if the client has not finished within `total`; a caller's deadline never
    moves (the caller is waiting by its own clock)."""

    __slots__ = ("_body", "_caller_bound", "_delay", "_request", "_since", "client_stalled")

    def __init__(
        self, body: ArrivingBody, request: Request, delay: float, caller_bound: bool
    ) -> None:
        self._body = body
        self._request = request
        self._delay = delay
        self._since = time.monotonic()
        self._caller_bound = caller_bound
        self.client_stalled = False

    def postpone(self) -> float:
        body = self._body
        if body.received_at == 0.0:
            if not body.throttled and body.error is None:
                self.client_stalled = True
            return 0.0
        shift = body.received_at - self._since
        if self._caller_bound or shift <= _SLACK:
            return 0.0
        self._since = body.received_at  # moved once: a later look must not move it again
        deadline = self._request.deadline
        if deadline is not None:
            self._request.deadline = deadline + shift
        later = body.received_at + self._delay - time.monotonic()
        return later if later > _SLACK else 0.0


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


class DeadlineLayer(Filter):
    """Sets `request.deadline`, refuses already-spent budgets, and enforces the total timeout
    around everything inside it (breaker, retries with their backoff, balancer, upstream)."""

    __slots__ = ("_clock", "_lazy", "_loop", "_observer", "_stamp", "_total")

    def __init__(
        self,
        total: float,
        clock: Clock,
        observer: Observer | None = None,
        stamp: bool = True,
        lazy: bool = False,
    ) -> None:
        """`stamp=False` when a retry layer inside stamps each attempt anyway: the header
        would be written twice per request (a header-list rebuild each).
        `lazy=True` when a router inside times each try (`TryTimeout`): one timer per
        request instead of two. The total timer is then not armed here for a request
        whose body is in: a try is capped at the deadline, so during a try its own timer
        comes due first, or is the deadline's when the deadline is the tighter limit; the
        total timer is armed (`arm_total`) only before waiting outside a try (backoff,
        buffering a body for replay)."""
        self._total = total
        self._clock = clock
        self._observer: Observer = observer or NullObserver()
        self._stamp = stamp
        self._lazy = lazy
        self._loop = LoopRef()

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        request = x.request
        now = self._clock.monotonic()
        own = now + self._total
        budget = caller_budget(request)
        callers = None if budget is None else now + budget
        if request.deadline is not None and (callers is None or request.deadline < callers):
            callers = request.deadline  # an outer stage already set a tighter deadline
        if budget is not None and budget <= 0:
            self._observer.rejected(request.upstream, "deadline_exceeded")
            raise DeadlineExceeded(
                "the caller's deadline was already spent", upstream=request.upstream
            )
        caller_bound = callers is not None and callers < own
        request.deadline = callers if callers is not None and caller_bound else own
        if self._stamp:
            stamp_remaining(request, now)
        delay = request.deadline - now
        body = arriving(request.body)
        hold = None if body is None else _TotalHold(body, request, delay, caller_bound)
        x.caller_bound = caller_bound
        x.deadline_hold = hold
        if self._lazy and hold is None:
            x.deadline_lazy = True
            x.deadline_expiry = None
        else:
            x.deadline_expiry = Expiry(self._loop.timers(), delay, hold)
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        expiry: Expiry | None = x.deadline_expiry
        if expiry is not None:
            expiry.close()
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        expiry: Expiry | None = x.deadline_expiry
        # Closed (disarmed) first in every case; True when it is our timer that fired.
        fired = expiry is not None and expiry.close()
        request = x.request
        if isinstance(exc, asyncio.CancelledError):
            if not fired:
                return None
            # our own total timer fired
        elif isinstance(exc, TimeoutError):
            pass
        elif isinstance(exc, UpstreamTimeout):
            # The retry stage caps each try at the deadline, so its timeout may be the one
            # that fires when the caller's budget runs out: report whose budget it was.
            if (
                x.caller_bound
                and request.deadline is not None
                and self._clock.monotonic() >= request.deadline - _SLACK
            ):
                raise DeadlineExceeded(
                    "the caller's deadline expired waiting for the upstream",
                    upstream=request.upstream,
                ) from exc
            return None
        else:
            return None
        cause = None if isinstance(exc, asyncio.CancelledError) else exc
        hold: _TotalHold | None = x.deadline_hold
        if hold is not None and hold.client_stalled:
            raise BadRequest(
                f"request body not received within {self._total:g}s",
                upstream=request.upstream,
                status=408,
            ) from cause
        if x.caller_bound:
            raise DeadlineExceeded(
                "the caller's deadline expired waiting for the upstream",
                upstream=request.upstream,
            ) from cause
        raise UpstreamTimeout(
            f"no response within the total timeout of {self._total:g}s",
            upstream=request.upstream,
        ) from cause

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)


def arm_total(x: Exchange, timers: TimerQueue, now: float) -> None:
    """Before waiting outside a try: arm the total timer a lazy `DeadlineLayer` left to the
    router (due at the deadline, at once if it has passed)."""
    deadline = x.request.deadline
    if x.deadline_lazy and x.deadline_expiry is None and deadline is not None:
        x.deadline_expiry = Expiry(timers, max(0.0, deadline - now))
