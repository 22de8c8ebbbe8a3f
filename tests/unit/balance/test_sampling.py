"""The picking rule on seeded RNGs: a retry never goes back to a tried endpoint while an
untried one is available, for every balancer and cluster size ≥ 2; P2C with one untried
candidate left picks it instead of comparing it with a tried one."""

from __future__ import annotations

import random

import pytest

from sidecar.balance.cluster import Cluster, EndpointState
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.factory import make_balancer
from sidecar.balance.least_request import LeastRequestBalancer
from sidecar.balance.sampling import pick_two
from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import FakeClock

NAMES = ["round_robin", "random", "least_request", "ewma"]


def states(n: int) -> list[EndpointState]:
    c = Cluster("svc")
    c.update(EndpointSet("svc", tuple(Endpoint("10.0.0.1", 9000 + i) for i in range(n)), "s", 0))
    return c.states


@pytest.mark.parametrize("seed", range(20))
def test_pick_two_of_two_with_one_avoided_returns_the_other_twice(seed: int) -> None:
    a, b = states(2)
    first, second = pick_two([a, b], [a.endpoint], random.Random(seed))
    assert first is b and second is b


@pytest.mark.parametrize("seed", range(20))
def test_pick_two_never_pairs_an_untried_with_a_tried_one(seed: int) -> None:
    st = states(5)
    rng = random.Random(seed)
    for k in range(1, 5):
        avoid = [s.endpoint for s in st[:k]]
        for _ in range(50):
            x, y = pick_two(st, avoid, rng)
            assert x.endpoint not in avoid and y.endpoint not in avoid


def test_pick_two_without_avoid_returns_two_distinct() -> None:
    st = states(2)
    rng = random.Random(3)
    for _ in range(50):
        x, y = pick_two(st, (), rng)
        assert x is not y


def test_the_reported_case_ewma_dead_untried_vs_slow_known() -> None:
    """The issue's case: the dead endpoint took this request's first try; the retry must go
    to the slow one (100 ms, known) even though the dead one, with no sample, looks cheaper
    (30 ms default cost)."""
    clock = FakeClock()
    dead, slow = states(2)
    b = PeakEwmaBalancer(clock, random.Random(0))
    b.observe(slow, 0.100, clock.now, ok=True)
    assert b.cost(dead, clock.now) < b.cost(slow, clock.now)  # why the old rule failed
    for seed in range(50):
        b = PeakEwmaBalancer(clock, random.Random(seed))
        assert b.pick([dead, slow], [dead.endpoint]) is slow
        assert b.pick([slow, dead], [dead.endpoint]) is slow


def test_least_request_two_candidates_one_tried() -> None:
    tried, other = states(2)
    other.inflight = 7  # busier, but the only untried one
    for seed in range(50):
        b = LeastRequestBalancer(random.Random(seed))
        assert b.pick([tried, other], [tried.endpoint]) is other


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [2, 3, 10])
def test_retries_walk_untried_endpoints_first(name: str, n: int) -> None:
    """Simulate one request's tries: each pick avoids everything tried so far, so the
    first n picks visit n distinct endpoints, whatever the costs say."""
    clock = FakeClock()
    for seed in range(20):
        st = states(n)
        b = make_balancer(name, clock, random.Random(seed))
        # Make the tried ones look cheapest: an unknown endpoint next to slow known ones.
        for s in st[1:]:
            b.observe(s, 0.1, clock.now, ok=True)
        tried: list[Endpoint] = []
        for _ in range(n):
            pick = b.pick(st, tried)
            assert pick.endpoint not in tried
            tried.append(pick.endpoint)
        assert len(set(tried)) == n
