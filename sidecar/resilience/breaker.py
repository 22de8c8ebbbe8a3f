"""Circuit breaker per upstream (resilience4j's model): a pure state machine on an injected
monotonic clock, and a thin layer around it.

CLOSED: calls pass; outcomes feed a failure-ratio window (bucketed, O(1)) and a consecutive
failure count. It trips to OPEN when, within `window`, at least `minimum_requests` calls were
seen and failures/calls ≥ `failure_ratio`, or after `consecutive_failures` failures in a row.
OPEN: every call is refused at once (CircuitOpen, retry-after = time left) until
`reset_timeout` has passed; then HALF_OPEN.
HALF_OPEN: at most `half_open_requests` probes are in flight at any moment; any probe failure
re-opens, `half_open_requests` probe successes close. A probe that ends without an outcome
(cancelled, refused locally) frees its slot, so the breaker can't be stuck half-open.

Outcomes of calls admitted in an earlier state are ignored (each admission carries the epoch
it was admitted in): a slow call from before the trip can't close a fresh OPEN breaker."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from sidecar.clock import Clock
from sidecar.config import CircuitBreakerConfig
from sidecar.errors import CircuitOpen, SidecarError
from sidecar.events import NullObserver, Observer
from sidecar.http import Response
from sidecar.resilience.classify import Outcome, classify_error, classify_reply
from sidecar.resilience.log_limit import LogLimiter
from sidecar.resilience.window import BucketedCounter
from sidecar.stack import Exchange, Filter, Handler, alone

_CALLS = 0
_FAILURES = 1

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_config",
        "_consecutive",
        "_epoch",
        "_on_transition",
        "_opened_at",
        "_probe_successes",
        "_probes_inflight",
        "_state",
        "_window",
    )

    def __init__(
        self,
        config: CircuitBreakerConfig,
        clock: Clock,
        on_transition: Callable[[BreakerState], None] | None = None,
        buckets: int = 10,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_transition = on_transition
        self._window = BucketedCounter(config.window, buckets, slots=2)
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_inflight = 0
        self._probe_successes = 0

    # ---------------------------------------------------------------- queries
    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def state(self) -> BreakerState:
        """The state as of now (an OPEN breaker whose reset time passed reads HALF_OPEN)."""
        self._maybe_half_open(self._clock.monotonic())
        return self._state

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker lets probes through (0 when not OPEN)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._config.reset_timeout - self._clock.monotonic())

    # ---------------------------------------------------------------- admission
    def acquire(self) -> int | None:
        """Admit a call: returns its ticket (to pass to `record`/`release`), or None when the
        call must be refused."""
        state = self._state
        if state is BreakerState.CLOSED:
            return self._epoch
        if state is BreakerState.OPEN and not self._maybe_half_open(self._clock.monotonic()):
            return None
        # HALF_OPEN
        if self._probes_inflight >= self._config.half_open_requests:
            return None
        self._probes_inflight += 1
        return self._epoch

    def record(self, ticket: int, outcome: Outcome) -> None:
        """The admitted call ended with `outcome`."""
        if ticket != self._epoch:
            return  # admitted under an earlier state: its outcome is history
        if self._state is BreakerState.HALF_OPEN:
            self._probes_inflight -= 1
            if outcome.is_failure:
                self._open(self._clock.monotonic())
            elif outcome is Outcome.SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self._config.half_open_requests:
                    self._transition(BreakerState.CLOSED)
            return
        if self._state is not BreakerState.CLOSED:
            return
        now = self._clock.monotonic()
        cfg = self._config
        if outcome is Outcome.SUCCESS:
            self._consecutive = 0
            self._window.add(now, _CALLS)
        elif outcome.is_failure:
            self._consecutive += 1
            self._window.add(now, _CALLS)
            self._window.add(now, _FAILURES)
            if cfg.consecutive_failures and self._consecutive >= cfg.consecutive_failures:
                self._open(now)
                return
        else:
            return  # local refusals, cancellations and our own bugs say nothing
        # Evaluated on every call, as resilience4j does: the call that reaches
        # `minimum_requests` may be a success and still find the ratio over the threshold.
        calls = self._window.total(now, _CALLS)
        failures = self._window.total(now, _FAILURES)
        if calls >= cfg.minimum_requests and failures >= cfg.failure_ratio * calls:
            self._open(now)

    def release(self, ticket: int) -> None:
        """The admitted call ended without an outcome (cancelled): free a probe slot."""
        if ticket == self._epoch and self._state is BreakerState.HALF_OPEN:
            self._probes_inflight -= 1

    # ---------------------------------------------------------------- transitions
    def _maybe_half_open(self, now: float) -> bool:
        if self._state is not BreakerState.OPEN:
            return True
        if now < self._opened_at + self._config.reset_timeout:
            return False
        self._transition(BreakerState.HALF_OPEN)
        return True

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._transition(BreakerState.OPEN)

    def _transition(self, to: BreakerState) -> None:
        self._state = to
        self._epoch += 1
        self._probes_inflight = 0
        self._probe_successes = 0
        if to is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.reset()
        if self._on_transition is not None:
            self._on_transition(to)

    def snapshot(self) -> dict[str, Any]:
        """For /admin/breakers."""
        now = self._clock.monotonic()
        state = self.state
        return {
            "state": state.value,
            "calls_in_window": self._window.total(now, _CALLS),
            "failures_in_window": self._window.total(now, _FAILURES),
            "consecutive_failures": self._consecutive,
            "retry_after_s": round(self.retry_after(), 3),
            "half_open_probes_in_flight": self._probes_inflight,
            "config": {
                "failure_ratio": self._config.failure_ratio,
                "minimum_requests": self._config.minimum_requests,
                "window_s": self._config.window,
                "consecutive_failures": self._config.consecutive_failures,
                "reset_timeout_s": self._config.reset_timeout,
                "half_open_requests": self._config.half_open_requests,
            },
        }


class CircuitBreakerLayer(Filter):
    """Refuses calls while the breaker is open (no upstream I/O: a few microseconds) and feeds
    every admitted call's classified outcome back to it."""

    __slots__ = ("_breaker", "_observer", "_upstream")

    def __init__(
        self, upstream: str, breaker: CircuitBreaker, observer: Observer | None = None
    ) -> None:
        self._upstream = upstream
        self._breaker = breaker
        self._observer: Observer = observer or NullObserver()

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def active(self) -> bool:
        return self._breaker.enabled

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        ticket = self._breaker.acquire()
        if ticket is None:
            self._observer.rejected(self._upstream, "circuit_open")
            raise CircuitOpen(
                f"circuit breaker for {self._upstream!r} is open",
                upstream=self._upstream,
                retry_after=self._breaker.retry_after(),
            )
        x.breaker_ticket = ticket
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        self._breaker.record(x.breaker_ticket, classify_reply(response))
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        if isinstance(exc, SidecarError):
            self._breaker.record(x.breaker_ticket, classify_error(exc))
        else:
            self._breaker.release(x.breaker_ticket)
        return None

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)


_TRANSITION_LOG = {
    BreakerState.OPEN: "circuit breaker for upstream %s opened: refusing calls for %s",
    BreakerState.HALF_OPEN: "circuit breaker for upstream %s is half-open: probing%s",
    BreakerState.CLOSED: "circuit breaker for upstream %s closed: calls flow again%s",
}


def breaker_for(
    upstream: str, config: CircuitBreakerConfig, clock: Clock, observer: Observer
) -> CircuitBreaker:
    """A breaker that reports its transitions to telemetry and to the log (once each, at
    info, rate-limited)."""
    limiter = LogLimiter()

    def on_transition(to: BreakerState) -> None:
        observer.breaker_state(upstream, to.value)
        detail = f"{config.reset_timeout:g}s" if to is BreakerState.OPEN else ""
        limiter.info(log, clock.monotonic(), _TRANSITION_LOG[to], upstream, detail)

    return CircuitBreaker(config, clock, on_transition=on_transition)
