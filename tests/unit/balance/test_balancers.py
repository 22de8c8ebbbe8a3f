import random
from collections import Counter

import pytest

from sidecar.balance.cluster import Cluster, EndpointState
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.factory import make_balancer
from sidecar.balance.least_request import LeastRequestBalancer
from sidecar.balance.random import RandomBalancer
from sidecar.balance.round_robin import RoundRobinBalancer
from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import FakeClock

NAMES = ["round_robin", "random", "least_request", "ewma"]


def states(n: int) -> list[EndpointState]:
    c = Cluster("svc")
    c.update(EndpointSet("svc", tuple(Endpoint("10.0.0.1", 9000 + i) for i in range(n)), "s", 0))
    return c.states


def test_factory_builds_each_and_rejects_unknown() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobinBalancer)
    assert isinstance(make_balancer("random"), RandomBalancer)
    assert isinstance(make_balancer("least_request"), LeastRequestBalancer)
    assert isinstance(make_balancer("ewma"), PeakEwmaBalancer)
    with pytest.raises(ValueError, match="unknown load balancer"):
        make_balancer("magic")


@pytest.mark.parametrize("name", NAMES)
def test_single_candidate(name: str) -> None:
    st = states(1)
    b = make_balancer(name, FakeClock(), random.Random(1))
    assert b.pick(st) is st[0]
    assert b.pick(st, [st[0].endpoint]) is st[0]  # nothing else to pick


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_avoid_is_honoured_when_an_alternative_exists(name: str, n: int) -> None:
    st = states(n)
    b = make_balancer(name, FakeClock(), random.Random(2))
    rng = random.Random(3)
    for _ in range(300):
        k = rng.randrange(1, min(n, 4))  # up to 3 tried endpoints, at least one left
        avoid = [s.endpoint for s in rng.sample(st, k)]
        assert b.pick(st, avoid).endpoint not in avoid


@pytest.mark.parametrize("name", ["round_robin", "random", "least_request"])
def test_spreads_over_all_endpoints(name: str) -> None:
    st = states(5)
    b = make_balancer(name, FakeClock(), random.Random(4))
    counts = Counter(b.pick(st).endpoint.port for _ in range(5000))
    assert set(counts) == {s.endpoint.port for s in st}
    assert min(counts.values()) > 5000 / 5 * 0.7


def test_round_robin_cycles() -> None:
    st = states(3)
    b = RoundRobinBalancer()
    assert [b.pick(st).endpoint.port for _ in range(6)] == [9000, 9001, 9002] * 2


def test_least_request_prefers_fewer_inflight() -> None:
    st = states(2)
    st[0].inflight = 5
    b = LeastRequestBalancer(random.Random(5))
    assert all(b.pick(st) is st[1] for _ in range(50))


def test_ewma_is_peak_sensitive_and_decays() -> None:
    clock = FakeClock(100.0)
    b = PeakEwmaBalancer(clock, random.Random(6), default_rtt=0.03, decay=10.0)
    s = states(1)[0]
    assert b.estimate(s, clock.now) == 0.03
    b.observe(s, 0.010, clock.now, ok=True)
    b.observe(s, 0.200, clock.now, ok=True)
    assert s.ewma_rtt == 0.200  # a slower sample replaces the estimate at once
    clock.advance(10.0)
    b.observe(s, 0.010, clock.now, ok=True)
    assert 0.010 < s.ewma_rtt < 0.05  # a faster one blends in by elapsed time
    clock.advance(30.0)
    assert b.estimate(s, clock.now) < s.ewma_rtt * 0.06  # idle: decays towards zero
    before = b.estimate(s, clock.now)
    b.observe(s, 0.001, clock.now, ok=False)
    assert s.ewma_rtt >= before  # a fast failure never makes it look faster


def test_ewma_cost_counts_inflight() -> None:
    clock = FakeClock()
    b = PeakEwmaBalancer(clock, random.Random(7))
    a, c = states(2)
    b.observe(a, 0.010, clock.now, ok=True)
    b.observe(c, 0.010, clock.now, ok=True)
    a.inflight = 3
    assert b.cost(a, clock.now) == pytest.approx(4 * b.cost(c, clock.now))
    assert all(b.pick([a, c]) is c for _ in range(20))
