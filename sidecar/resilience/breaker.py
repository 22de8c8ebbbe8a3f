"""Circuit breaker per upstream: a pure state machine on an injected monotonic clock.

CLOSED counts outcomes in a time window of buckets (ratio trigger: at least
`minimum_requests` and `failure_ratio` failed) and a run of consecutive failures. OPEN rejects
at once (no upstream call) until `reset_timeout`; then HALF_OPEN admits exactly
`half_open_requests` probes at a time. All probes succeeding closes it; one failing re-opens it.
A probe that ends with no verdict (the client went away) frees its slot, so the breaker can
never be stuck half-open. OPEN means traffic is rejected, as everyone expects."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from sidecar.clock import Clock
from sidecar.config import CircuitBreakerConfig
from sidecar.errors import CircuitOpen, SidecarError
from sidecar.http import Request, Response
from sidecar.resilience.classify import Outcome, classify_error, classify_status
from sidecar.stack import Handler

_BUCKETS = 10


class State(Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    def __init__(
        self,
        config: CircuitBreakerConfig,
        clock: Clock,
        on_transition: Callable[[State], None] = lambda s: None,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._on_transition = on_transition
        self.state = State.CLOSED
        self._opened_at = 0.0
        self._probes_inflight = 0
        self._probe_successes = 0
        self._consecutive = 0
        self._width = config.window / _BUCKETS
        self._ok = [0] * _BUCKETS
        self._fail = [0] * _BUCKETS
        self._stamp = [-1] * _BUCKETS
        self.transitions = 0

    # ---------------------------------------------------------------- decisions
    def acquire(self) -> bool:
        """Admit a request: returns True if it is a half-open probe. Raises CircuitOpen."""
        if self.state is State.OPEN:
            if self._clock.monotonic() - self._opened_at < self._cfg.reset_timeout:
                raise CircuitOpen("circuit breaker is open", retry_after=self.retry_after())
            self._move(State.HALF_OPEN)
        if self.state is State.HALF_OPEN:
            if self._probes_inflight >= self._cfg.half_open_requests:
                raise CircuitOpen(
                    "circuit breaker is half-open and its probe is in flight",
                    retry_after=1.0,
                )
            self._probes_inflight += 1
            return True
        return False

    def release(self, probe: bool, success: bool | None) -> None:
        """Record the outcome of an admitted request. `success=None`: no verdict."""
        if probe:
            if self.state is not State.HALF_OPEN:
                return
            self._probes_inflight -= 1
            if success is None:
                return
            if success:
                self._probe_successes += 1
                if self._probe_successes >= self._cfg.half_open_requests:
                    self._move(State.CLOSED)
            else:
                self._trip()
            return
        if success is None or self.state is not State.CLOSED:
            return
        i = self._bucket()
        if success:
            self._ok[i] += 1
            self._consecutive = 0
            return
        self._fail[i] += 1
        self._consecutive += 1
        if self._cfg.consecutive_failures and self._consecutive >= self._cfg.consecutive_failures:
            self._trip()
            return
        ok, fail = self._totals()
        total = ok + fail
        if total >= self._cfg.minimum_requests and fail / total >= self._cfg.failure_ratio:
            self._trip()

    def retry_after(self) -> float:
        if self.state is State.OPEN:
            left = self._cfg.reset_timeout - (self._clock.monotonic() - self._opened_at)
            return max(left, 0.001)
        return 0.0

    def snapshot(self) -> dict[str, object]:
        ok, fail = self._totals()
        return {
            "state": self.state.value,
            "window_requests": ok + fail,
            "window_failures": fail,
            "consecutive_failures": self._consecutive,
            "retry_after_s": round(self.retry_after(), 3),
            "half_open_probes_in_flight": self._probes_inflight,
            "transitions": self.transitions,
        }

    # ---------------------------------------------------------------- internals
    def _trip(self) -> None:
        self._opened_at = self._clock.monotonic()
        self._move(State.OPEN)

    def _move(self, state: State) -> None:
        if state is self.state:
            return
        self.state = state
        self.transitions += 1
        self._probes_inflight = 0
        self._probe_successes = 0
        if state is State.CLOSED:
            self._consecutive = 0
            self._ok = [0] * _BUCKETS
            self._fail = [0] * _BUCKETS
        self._on_transition(state)

    def _bucket(self) -> int:
        tick = int(self._clock.monotonic() / self._width)
        i = tick % _BUCKETS
        if self._stamp[i] != tick:
            self._stamp[i] = tick
            self._ok[i] = 0
            self._fail[i] = 0
        return i

    def _totals(self) -> tuple[int, int]:
        oldest = int(self._clock.monotonic() / self._width) - _BUCKETS
        ok = fail = 0
        for i in range(_BUCKETS):
            if self._stamp[i] > oldest:
                ok += self._ok[i]
                fail += self._fail[i]
        return ok, fail


class CircuitBreakerLayer:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def wrap(self, inner: Handler) -> Handler:
        breaker = self.breaker

        async def guarded(request: Request) -> Response:
            try:
                probe = breaker.acquire()
            except CircuitOpen as err:
                err.upstream = request.upstream
                raise
            verdict: bool | None = None
            try:
                response = await inner(request)
                verdict = classify_status(response.status) is Outcome.SUCCESS
                return response
            except SidecarError as err:
                outcome = classify_error(err)
                verdict = None if outcome is Outcome.LOCAL else False
                raise
            finally:
                breaker.release(probe, verdict)

        return guarded
