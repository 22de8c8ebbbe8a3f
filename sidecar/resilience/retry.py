"""Retries: per-try timeout, safe-to-retry rules, jittered backoff within the deadline,
and a retry budget. The per-try timeout starts when the request has been fully received
(see deadline.py).

Safe means: a connect failure (no byte left the sidecar) may always be retried; any other
condition only for idempotent methods whose body can be sent again (replayable, or buffered up
to `limits.retry_buffer_bytes`). `retries.attempts` is the number of retries after the first
try (attempts: 2 → at most 3 tries)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from sidecar import grpc
from sidecar.clock import Clock
from sidecar.config import RetriesConfig
from sidecar.errors import SidecarError, UpstreamTimeout
from sidecar.events import NullObserver, Observer
from sidecar.http import Request, Response
from sidecar.resilience.budget import RetryBudget
from sidecar.resilience.classify import Outcome, classify_error
from sidecar.resilience.deadline import TryHold, arm_total, arriving, stamp_remaining
from sidecar.resilience.expiry import Expiry, LoopRef
from sidecar.resilience.grpc_replay import RecordingBody
from sidecar.resilience.replay import ReplayBuffers, discard_body
from sidecar.stack import Chain, Exchange, Filter, Handler
from sidecar.vocab.headers import ATTEMPT_HEADER
from sidecar.vocab.methods import IDEMPOTENT_METHODS

Sleep = Callable[[float], Awaitable[None]]


class RetryPolicy:
    """Which failures the config says to retry; built once from `RetriesConfig`."""

    __slots__ = ("connect_failure", "grpc_codes", "reset", "statuses", "timeout")

    def __init__(self, on: list[str | int]) -> None:
        self.connect_failure = "connect_failure" in on
        self.reset = "reset" in on
        self.timeout = "timeout" in on
        any_5xx = "5xx" in on
        self.statuses = (
            frozenset(range(500, 600))
            if any_5xx
            else frozenset(c for c in on if isinstance(c, int))
        )
        self.grpc_codes = frozenset(
            int(grpc.RETRY_NAMES[c]) for c in on if isinstance(c, str) and c in grpc.RETRY_NAMES
        )

    def wants_body(self) -> bool:
        """Whether any condition beyond connect failures could retry (and so needs the body
        to be replayable)."""
        return self.reset or self.timeout or bool(self.statuses)

    def reason_for_error(self, outcome: Outcome, replay_safe: bool) -> str | None:
        if outcome is Outcome.CONNECT_FAILURE:
            return "connect_failure" if self.connect_failure else None
        if not replay_safe:
            return None
        if outcome is Outcome.RESET and self.reset:
            return "reset"
        if outcome is Outcome.TIMEOUT and self.timeout:
            return "timeout"
        return None

    def reason_for_status(self, status: int, replay_safe: bool) -> str | None:
        return str(status) if replay_safe and status in self.statuses else None

    def reason_for_grpc(self, response: Response, replayable: bool) -> str | None:
        """A gRPC failure is retried only from a Trailers-Only reply: no response message
        has reached the caller yet (gRFC A6)."""
        code = grpc.trailers_only_status(response) if replayable else None
        if code is None or code not in self.grpc_codes:
            return None
        return grpc.GrpcStatus(code).name.lower()


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """ "Equal jitter" exponential backoff for the `retry`-th retry (1-based): half of the
    exponential step fixed, half random, so retries spread out but never bunch at zero."""
    step = min(cap, base * float(2 ** (retry - 1)))
    return step / 2 + rng.uniform(0.0, step / 2)


class TryTimeout(Filter):
    """The router's per-try timeout, a filter around each attempt: caps the try at the
    deadline, stamps the budget left on the request, and turns its own timer firing into
    UpstreamTimeout (a retryable timeout, unlike the deadline's)."""

    __slots__ = ("_clock", "_loop", "_per_try", "_upstream")

    def __init__(self, upstream: str, per_try_timeout: float, clock: Clock) -> None:
        self._upstream = upstream
        self._per_try = per_try_timeout
        self._clock = clock
        self._loop = LoopRef()

    def on_request(self, x: Exchange) -> Response | None:
        request = x.request
        now = self._clock.monotonic()
        timeout = self._per_try
        if request.deadline is not None:
            left = request.deadline - now
            if left <= timeout:
                timeout = left
                if timeout <= 0:
                    raise UpstreamTimeout(
                        "the deadline passed before this try", upstream=self._upstream
                    )
                if x.deadline_lazy and x.deadline_expiry is None:
                    # The deadline is this try's limit and its timer is not armed yet (see
                    # DeadlineLayer, lazy): the one timer is the deadline's, and the
                    # deadline stage says what its firing means.
                    stamp_remaining(request, now)
                    arm_total(x, self._loop.timers(), now)
                    x.try_expiry = None
                    x.try_timeout = timeout
                    return None
        stamp_remaining(request, now)
        # The upstream's time starts when it can have the whole request: a body still
        # arriving from the client moves this try's timer (the client's share is not
        # the upstream's, nor a reason to retry or to open the breaker).
        body = arriving(request.body)
        hold = None if body is None else TryHold(body, timeout)
        x.try_timeout = timeout
        x.try_expiry = Expiry(self._loop.timers(), timeout, hold)
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        expiry: Expiry | None = x.try_expiry
        if expiry is not None:
            expiry.close()
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        expiry: Expiry | None = x.try_expiry
        if expiry is None:
            return None  # the deadline's timer timed this try
        if isinstance(exc, asyncio.CancelledError):
            if not expiry.close():
                return None
            cause: BaseException | None = None  # the per-try timer fired
        elif isinstance(exc, TimeoutError):
            expiry.close()
            cause = exc
        else:
            expiry.close()
            return None
        raise UpstreamTimeout(
            f"no response headers within {x.try_timeout * 1000:.0f} ms", upstream=self._upstream
        ) from cause


class RetryLayer:
    __slots__ = (
        "_backoff_base",
        "_backoff_max",
        "_budget",
        "_buffer_bytes",
        "_clock",
        "_max_retries",
        "_observer",
        "_per_try",
        "_policy",
        "_replay",
        "_rng",
        "_sleep",
        "_timers",
        "_upstream",
    )

    def __init__(
        self,
        upstream: str,
        retries: RetriesConfig,
        per_try_timeout: float,
        retry_buffer_bytes: int,
        clock: Clock,
        observer: Observer | None = None,
        budget: RetryBudget | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        replay_buffers: ReplayBuffers | None = None,
    ) -> None:
        self._upstream = upstream
        self._max_retries = retries.attempts
        self._policy = RetryPolicy(retries.on)
        self._backoff_base = retries.backoff_base
        self._backoff_max = retries.backoff_max
        self._per_try = TryTimeout(upstream, per_try_timeout, clock)
        self._buffer_bytes = retry_buffer_bytes
        # Shared by every upstream's layer (the cap is on all in-flight requests together).
        self._replay = replay_buffers or ReplayBuffers(retry_buffer_bytes)
        self._clock = clock
        self._observer: Observer = observer or NullObserver()
        self._budget = budget or RetryBudget(retries.budget_ratio, retries.min_retries_per_s, clock)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._timers = LoopRef()

    @property
    def budget(self) -> RetryBudget:
        return self._budget

    @property
    def per_try(self) -> TryTimeout:
        """The per-try timeout, the first of the router's per-attempt filters."""
        return self._per_try

    def wrap(self, inner: Handler) -> Handler:
        """The retry stage on its own (the router runs it inline, see sidecar.stack)."""
        attempt = Chain([self._per_try], inner)
        if self._max_retries == 0:
            return attempt

        async def retry(request: Request) -> Response:
            x = Exchange(request)
            if not self.begin(x):
                return await self.tries(x, attempt)
            return await self._loop(x, attempt)

        return retry

    # ---------------------------------------------------------------- the router's policy
    def begin(self, x: Exchange) -> bool:
        """Before the first try; False when the body must be buffered for replay first (the
        tries then run in `tries`)."""
        if self._max_retries == 0:
            return True
        request = x.request
        self._budget.deposit()
        idempotent = request.method in IDEMPOTENT_METHODS
        if self._grpc_call(request):
            # A gRPC stream is recorded as it goes (a bidi call must not wait for its
            # whole request): retried only if the recording still holds all of it.
            request.body = RecordingBody(request.body, self._buffer_bytes)
        elif idempotent and self._policy.wants_body() and not request.body.replayable:
            return False
        x.replay_safe = idempotent and request.body.replayable
        return True

    async def tries(self, x: Exchange, attempt: Handler) -> Response:
        """Every try of a request whose body is held for a retry if there is room."""

        async def send(request: Request) -> Response:
            x.replay_safe = request.method in IDEMPOTENT_METHODS and request.body.replayable
            return await self._loop(x, attempt)

        arm_total(x, self._timers.timers(), self._clock.monotonic())  # waits outside a try
        return await self._replay.buffered(x.request, self._buffer_bytes, send)

    async def _loop(self, x: Exchange, attempt: Handler) -> Response:
        request = x.request
        while True:
            try:
                response: Response | None = await attempt(request)
            except SidecarError as exc:
                decision = self.after_error(x, exc)
                if decision is None:
                    raise
                response = None
            else:
                assert response is not None
                decision = self.after_response(x, response)
                if decision is None:
                    return response
            await self.pause(x, response, decision)

    def after_error(self, x: Exchange, exc: SidecarError) -> tuple[float, str] | None:
        if self._max_retries == 0:
            return None
        reason = self._policy.reason_for_error(classify_error(exc), x.replay_safe)
        return None if reason is None else self._decide(x.request, reason)

    def after_response(self, x: Exchange, response: Response) -> tuple[float, str] | None:
        if self._max_retries == 0:
            return None
        request = x.request
        reason = self._policy.reason_for_status(response.status, x.replay_safe)
        if reason is None and self._grpc_call(request):
            reason = self._policy.reason_for_grpc(response, request.body.replayable)
        return None if reason is None else self._decide(request, reason)

    async def pause(
        self, x: Exchange, response: Response | None, decision: tuple[float, str]
    ) -> None:
        delay, reason = decision
        request = x.request
        arm_total(x, self._timers.timers(), self._clock.monotonic())  # waits outside a try
        if response is not None:
            await discard_body(response.body)
        await self._sleep(delay)
        request.attempt += 1
        request.retry_reason = reason
        request.headers.set(ATTEMPT_HEADER, str(request.attempt))
        x.replay_safe = request.method in IDEMPOTENT_METHODS and request.body.replayable

    def _grpc_call(self, request: Request) -> bool:
        return (
            bool(self._policy.grpc_codes)
            and request.http_version == "2"
            and grpc.is_grpc(request.headers)
        )

    def _decide(self, request: Request, reason: str) -> tuple[float, str] | None:
        """The backoff before the next retry, or None if it must not happen. Only a "yes"
        withdraws from the budget and is counted."""
        retry_no = request.attempt
        if retry_no > self._max_retries:
            return None
        delay = backoff_delay(retry_no, self._backoff_base, self._backoff_max, self._rng)
        if request.deadline is not None and self._clock.monotonic() + delay >= request.deadline:
            return None
        if not self._budget.try_withdraw():
            self._observer.retry_budget_exhausted(self._upstream)
            return None
        self._observer.retry(self._upstream, reason)
        return delay, reason
