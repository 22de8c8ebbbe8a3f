from sidecar.balance.cluster import Cluster
from sidecar.config import OutlierDetectionConfig
from sidecar.discovery.endpoints import Endpoint, EndpointSet
from sidecar.resilience.classify import Outcome
from sidecar.resilience.outlier import OutlierDetector
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
