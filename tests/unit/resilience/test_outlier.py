import logging
from typing import Any

from sidecar.balance.cluster import Cluster, PassiveState
from sidecar.config import OutlierDetectionConfig
from sidecar.discovery.endpoints import EndpointSet
from sidecar.resilience.classify import Outcome
from sidecar.resilience.outlier import OutlierDetector
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import FakeClock, RecordingObserver


def cluster_of(n: int) -> Cluster:
    c = Cluster("svc")
    eps = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(n))
    c.update(EndpointSet("svc", eps, "static", 0.0))
    return c


def detector(c: Cluster, obs: RecordingObserver | None = None, **kw: object) -> OutlierDetector:
    cfg = OutlierDetectionConfig(**{"consecutive_5xx": 3, "base_ejection": 30.0, **kw})  # type: ignore[arg-type]
    return OutlierDetector(cfg, c, obs)


def fail(d: OutlierDetector, c: Cluster, i: int, now: float, times: int = 3) -> None:
    for _ in range(times):
        d.record(c.states[i], Outcome.STATUS_5XX, now)


def test_consecutive_failures_eject_and_success_resets() -> None:
    clock = FakeClock()
    c = cluster_of(4)
    obs = RecordingObserver()
    d = detector(c, obs)
    fail(d, c, 0, clock.now, times=2)
    d.record(c.states[0], Outcome.SUCCESS, clock.now)
    fail(d, c, 0, clock.now, times=2)
    assert not d.any_ejected(clock.now)
    d.record(c.states[0], Outcome.CONNECT_FAILURE, clock.now)
    assert c.states[0].is_ejected(clock.now)
    assert d.any_ejected(clock.now)
    assert [s.endpoint.port for s in c.available(clock.now)] == [8001, 8002, 8003]
    assert obs.of("endpoints")[-1] == ("endpoints", "svc", "3", "1")


def test_ejection_time_grows_with_times_ejected_and_ends_by_itself() -> None:
    clock = FakeClock()
    c = cluster_of(4)
    obs = RecordingObserver()
    d = detector(c, obs)
    fail(d, c, 0, clock.now)
    assert c.states[0].ejected_until == clock.now + 30.0
    clock.advance(30.0)
    assert not d.any_ejected(clock.now)
    assert obs.of("endpoints")[-1] == ("endpoints", "svc", "4", "0")
    fail(d, c, 0, clock.now)
    assert c.states[0].ejected_until == clock.now + 60.0


def test_local_and_cancelled_outcomes_are_ignored() -> None:
    c = cluster_of(2)
    d = detector(c)
    for _ in range(10):
        d.record(c.states[0], Outcome.LOCAL, 0.0)
        d.record(c.states[0], Outcome.CANCELLED, 0.0)
    assert c.states[0].consecutive_failures == 0


def test_max_ejection_percent() -> None:
    clock = FakeClock()
    c = cluster_of(4)
    d = detector(c, max_ejection_percent=50)
    for i in range(4):
        fail(d, c, i, clock.now)
    assert len(c.available(clock.now)) == 2  # 50 % of 4


def test_at_least_one_is_ejected_even_below_one_endpoints_worth_of_percent() -> None:
    clock = FakeClock()
    c = cluster_of(3)
    d = detector(c, max_ejection_percent=10)
    for i in range(3):
        fail(d, c, i, clock.now)
    assert len(c.available(clock.now)) == 2  # Envoy: the first ejection always happens


def test_multiplier_decays_after_a_healthy_period() -> None:
    clock = FakeClock()
    c = cluster_of(2)
    d = detector(c)
    fail(d, c, 0, clock.now)
    clock.advance(30.0)
    d.record(c.states[0], Outcome.SUCCESS, clock.now)
    assert c.states[0].times_ejected == 1  # not yet healthy for a base period
    clock.advance(30.0)
    d.record(c.states[0], Outcome.SUCCESS, clock.now)
    assert c.states[0].times_ejected == 0
    assert not c.states[0].is_ejected(clock.now)


def test_disabled_detector_never_ejects() -> None:
    c = cluster_of(2)
    d = detector(c, enabled=False)
    fail(d, c, 0, 0.0, times=20)
    assert not c.states[0].is_ejected(0.0)


def test_local_origin_failures_eject_sooner_than_5xx() -> None:
    clock = FakeClock()
    c = cluster_of(4)
    d = OutlierDetector(
        OutlierDetectionConfig(consecutive_5xx=5, consecutive_local_origin_failure=2), c
    )
    d.record(c.states[0], Outcome.STATUS_5XX, clock.now, 500)
    d.record(c.states[0], Outcome.STATUS_5XX, clock.now, 500)
    d.record(c.states[1], Outcome.CONNECT_FAILURE, clock.now)
    assert not d.any_ejected(clock.now)
    d.record(c.states[1], Outcome.TIMEOUT, clock.now)
    assert c.states[1].is_ejected(clock.now) and not c.states[0].is_ejected(clock.now)


def test_local_origin_counter_off_leaves_consecutive_5xx() -> None:
    c = cluster_of(2)
    d = OutlierDetector(
        OutlierDetectionConfig(consecutive_5xx=4, consecutive_local_origin_failure=0), c
    )
    for _ in range(3):
        d.record(c.states[0], Outcome.CONNECT_FAILURE, 0.0)
    assert not c.states[0].is_ejected(0.0)
    d.record(c.states[0], Outcome.CONNECT_FAILURE, 0.0)
    assert c.states[0].is_ejected(0.0)


def test_gateway_failures_count_502_503_504_and_local_origin_but_not_500() -> None:
    c = cluster_of(2)
    d = OutlierDetector(
        OutlierDetectionConfig(
            consecutive_5xx=10, consecutive_local_origin_failure=0, consecutive_gateway_failure=3
        ),
        c,
    )
    s = c.states[0]
    d.record(s, Outcome.STATUS_5XX, 0.0, 503)
    d.record(s, Outcome.STATUS_5XX, 0.0, 500)  # resets the gateway run
    d.record(s, Outcome.STATUS_5XX, 0.0, 502)
    d.record(s, Outcome.RESET, 0.0)
    assert not s.is_ejected(0.0)
    d.record(s, Outcome.STATUS_5XX, 0.0, 504)
    assert s.is_ejected(0.0)


def test_returning_endpoint_is_on_probation_and_one_failure_ejects_it_again() -> None:
    clock = FakeClock()
    c = cluster_of(2)
    d = detector(c)
    s = c.states[0]
    fail(d, c, 0, clock.now)
    assert s.passive is PassiveState.EJECTED
    clock.advance(30.0)
    assert not d.any_ejected(clock.now)
    assert s.passive is PassiveState.PROBATION
    d.record(s, Outcome.CONNECT_FAILURE, clock.now)  # the probe
    assert s.is_ejected(clock.now) and s.ejected_until == clock.now + 60.0
    clock.advance(60.0)
    d.record(s, Outcome.SUCCESS, clock.now)  # probation noticed lazily, then passed
    assert s.passive is PassiveState.HEALTHY and not s.is_ejected(clock.now)
    d.record(s, Outcome.CONNECT_FAILURE, clock.now)
    assert not s.is_ejected(clock.now)  # healthy again: back to counting


def test_ejection_and_return_are_logged_once_each_at_info(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.resilience.outlier")
    clock = FakeClock()
    c = cluster_of(2)
    d = detector(c)
    fail(d, c, 0, clock.now, times=3)
    fail(d, c, 0, clock.now, times=5)  # while ejected: nothing more
    clock.advance(30.0)
    d.any_ejected(clock.now)
    d.record(c.states[0], Outcome.SUCCESS, clock.now)
    d.record(c.states[0], Outcome.SUCCESS, clock.now)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(msgs) == 2, msgs
    assert "10.0.0.1:8000 ejected for 30s" in msgs[0] and "3 consecutive" in msgs[0]
    assert "10.0.0.1:8000 is back in rotation" in msgs[1]


def test_flapping_endpoint_logs_are_rate_limited(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.resilience.outlier")
    c = cluster_of(2)
    d = detector(c, base_ejection=0.001)
    now = 0.0
    for _ in range(200):
        fail(d, c, 0, now)
        now += 1.0
        d.record(c.states[0], Outcome.SUCCESS, now)
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) < 60  # 400 transitions in 200 s: bucket of 10, one per 6 s
    assert any("suppressed" in r.getMessage() for r in info)
