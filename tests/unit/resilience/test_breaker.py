import logging
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import CircuitBreakerConfig
from sidecar.errors import CircuitOpen, NoHealthyEndpoints, UpstreamConnectFailure
from sidecar.resilience.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitBreakerLayer,
    breaker_for,
)
from sidecar.resilience.classify import Outcome
from tests.unit.resilience.fakes import (
    FakeClock,
    RecordingObserver,
    ScriptedUpstream,
    make_request,
    response,
)

F, S = Outcome.STATUS_5XX, Outcome.SUCCESS


def cfg(**kw: object) -> CircuitBreakerConfig:
    base: dict[str, object] = {
        "failure_ratio": 0.5,
        "minimum_requests": 10,
        "window": 10.0,
        "consecutive_failures": 0,
        "reset_timeout": 30.0,
        "half_open_requests": 1,
    }
    base.update(kw)
    return CircuitBreakerConfig(**base)  # type: ignore[arg-type]


def call(b: CircuitBreaker, outcome: Outcome) -> bool:
    t = b.acquire()
    if t is None:
        return False
    b.record(t, outcome)
    return True


def test_ratio_path_needs_minimum_requests() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(), clock)
    for _ in range(9):
        call(b, F)
    assert b.state is BreakerState.CLOSED  # 9 < minimum_requests
    call(b, S)  # 10 calls, 9 failures
    assert b.state is BreakerState.OPEN


def test_ratio_below_threshold_stays_closed() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(), clock)
    for i in range(100):
        call(b, F if i % 3 == 0 else S)
        clock.advance(0.05)
    assert b.state is BreakerState.CLOSED


def test_old_failures_leave_the_window() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(), clock)
    for _ in range(9):
        call(b, F)
    clock.advance(11.0)
    for _ in range(9):
        call(b, S)
    call(b, F)
    assert b.state is BreakerState.CLOSED  # 1/10 failed in the window


def test_consecutive_path() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(minimum_requests=1000, consecutive_failures=5), clock)
    for _ in range(50):
        call(b, S)
    for _ in range(4):
        call(b, Outcome.CONNECT_FAILURE)
    call(b, S)  # a success resets the run
    for _ in range(4):
        call(b, Outcome.TIMEOUT)
    assert b.state is BreakerState.CLOSED
    call(b, Outcome.RESET)
    assert b.state is BreakerState.OPEN


def test_local_outcomes_do_not_count() -> None:
    b = CircuitBreaker(cfg(minimum_requests=1, consecutive_failures=1), FakeClock())
    for o in (Outcome.LOCAL, Outcome.CANCELLED, Outcome.INTERNAL):
        call(b, o)
    assert b.state is BreakerState.CLOSED


def test_open_rejects_until_reset_then_one_probe_closes() -> None:
    clock = FakeClock()
    seen: list[BreakerState] = []
    b = CircuitBreaker(cfg(minimum_requests=1), clock, on_transition=seen.append)
    call(b, F)
    assert b.state is BreakerState.OPEN
    clock.advance(10.0)
    assert b.acquire() is None
    assert b.retry_after() == pytest.approx(20.0)
    clock.advance(20.0)
    probe = b.acquire()
    assert probe is not None
    assert b.acquire() is None  # exactly one probe in flight
    b.record(probe, S)
    assert b.state is BreakerState.CLOSED
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_probe_failure_reopens_for_a_full_reset_timeout() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(minimum_requests=1), clock)
    call(b, F)
    clock.advance(30.0)
    probe = b.acquire()
    assert probe is not None
    clock.advance(1.0)
    b.record(probe, Outcome.TIMEOUT)
    assert b.state is BreakerState.OPEN
    assert b.retry_after() == pytest.approx(30.0)


def test_cancelled_probe_frees_its_slot() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(minimum_requests=1), clock)
    call(b, F)
    clock.advance(30.0)
    probe = b.acquire()
    assert probe is not None
    b.release(probe)
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is not None


def test_stale_outcomes_are_ignored() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(minimum_requests=1), clock)
    slow = b.acquire()  # admitted while closed
    call(b, F)  # trips
    clock.advance(30.0)
    probe = b.acquire()
    assert slow is not None and probe is not None
    b.record(slow, S)  # from the closed era: must not close the half-open breaker
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is None


def test_several_probes_must_all_succeed() -> None:
    clock = FakeClock()
    b = CircuitBreaker(cfg(minimum_requests=1, half_open_requests=3), clock)
    call(b, F)
    clock.advance(30.0)
    tickets = [b.acquire() for _ in range(4)]
    assert tickets[3] is None
    for t in tickets[:2]:
        assert t is not None
        b.record(t, S)
    assert b.state is BreakerState.HALF_OPEN
    assert tickets[2] is not None
    b.record(tickets[2], S)
    assert b.state is BreakerState.CLOSED


@settings(max_examples=300, deadline=None)
@given(
    probes=st.integers(1, 4),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("acquire"), st.just(0)),
            st.tuples(st.sampled_from(["ok", "fail", "cancel", "local"]), st.integers(0, 50)),
            st.tuples(st.just("tick"), st.integers(0, 40)),
        ),
        max_size=200,
    ),
)
def test_half_open_is_bounded_and_never_stuck(probes: int, ops: list) -> None:  # type: ignore[type-arg]
    clock = FakeClock()
    b = CircuitBreaker(
        cfg(minimum_requests=2, consecutive_failures=2, half_open_requests=probes), clock
    )
    inflight: list[tuple[int, BreakerState]] = []
    for op, arg in ops:
        if op == "tick":
            clock.advance(float(arg))
        elif op == "acquire":
            t = b.acquire()
            if t is not None:
                inflight.append((t, b.state))
        elif inflight:
            t, _ = inflight.pop(arg % len(inflight))
            if op == "ok":
                b.record(t, S)
            elif op == "fail":
                b.record(t, F)
            elif op == "local":
                b.record(t, Outcome.LOCAL)
            else:
                b.release(t)
        state = b.state
        if state is BreakerState.HALF_OPEN:
            current = [t for t, s in inflight if s is BreakerState.HALF_OPEN and t == b._epoch]
            assert len(current) <= probes
    # Never stuck: once every admitted call has ended, a half-open breaker admits a probe,
    # and an open one becomes half-open after reset_timeout.
    for t, _ in inflight:
        b.release(t)
    clock.advance(30.0)
    assert b.state in (BreakerState.HALF_OPEN, BreakerState.CLOSED)
    assert b.acquire() is not None


async def test_layer_rejects_fast_with_retry_after_and_reports() -> None:
    clock = FakeClock()
    obs = RecordingObserver()
    breaker = breaker_for("svc", cfg(minimum_requests=1), clock, obs)
    up = ScriptedUpstream(UpstreamConnectFailure("refused"))
    handler = CircuitBreakerLayer("svc", breaker, obs).wrap(up)
    with pytest.raises(UpstreamConnectFailure):
        await handler(make_request())
    clock.advance(5.0)
    t0 = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(CircuitOpen) as info:
            await handler(make_request())
    per_call = (time.perf_counter() - t0) / 1000
    assert per_call < 0.001  # generous: open answers don't touch the upstream
    assert len(up.calls) == 1
    assert info.value.retry_after == pytest.approx(25.0)
    assert obs.of("breaker_state") == [("breaker_state", "svc", "open")]
    assert len(obs.of("rejected")) == 1000


async def test_layer_counts_5xx_responses_and_ignores_local_refusals() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(cfg(minimum_requests=1000, consecutive_failures=2), clock)
    handler = CircuitBreakerLayer("svc", breaker).wrap(
        ScriptedUpstream(NoHealthyEndpoints("none"), NoHealthyEndpoints("none"), response(502))
    )
    for _ in range(2):
        with pytest.raises(NoHealthyEndpoints):
            await handler(make_request())
    assert breaker.state is BreakerState.CLOSED
    await handler(make_request())
    await handler(make_request())
    assert breaker.state is BreakerState.OPEN
    snap = breaker.snapshot()
    assert snap["state"] == "open" and snap["retry_after_s"] == 30.0


async def test_disabled_breaker_is_not_in_the_path() -> None:
    up = ScriptedUpstream(response(503))
    breaker = CircuitBreaker(cfg(enabled=False, minimum_requests=1), FakeClock())
    handler = CircuitBreakerLayer("svc", breaker).wrap(up)
    assert handler is up


def test_transitions_are_logged_once_each_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.resilience.breaker")
    clock = FakeClock()
    cfg = CircuitBreakerConfig(consecutive_failures=2, reset_timeout=30.0)
    b = breaker_for("users", cfg, clock, RecordingObserver())
    for _ in range(2):
        ticket = b.acquire()
        assert ticket is not None
        b.record(ticket, Outcome.CONNECT_FAILURE)
    assert b.acquire() is None  # refused while open: nothing more in the log
    clock.advance(30.0)
    ticket = b.acquire()
    assert ticket is not None
    b.record(ticket, Outcome.SUCCESS)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert msgs == [
        "circuit breaker for upstream users opened: refusing calls for 30s",
        "circuit breaker for upstream users is half-open: probing",
        "circuit breaker for upstream users closed: calls flow again",
    ]
