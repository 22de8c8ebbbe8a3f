"""Failures cost something in the P2C balancers: a failed endpoint must not look cheaper than
a known-good one, the penalty decays, and successes relieve it."""

from __future__ import annotations

import random

import pytest

from sidecar.balance.cluster import Cluster, EndpointState
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.least_request import LeastRequestBalancer
from sidecar.balance.penalty import (
    PENALTY_DECAY,
    failure_score,
    record_failure,
    record_success,
)
from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import FakeClock


def states(n: int) -> list[EndpointState]:
    c = Cluster("svc")
    c.update(EndpointSet("svc", tuple(Endpoint("10.0.0.1", 9000 + i) for i in range(n)), "s", 0))
    return c.states


def test_score_adds_up_decays_and_is_halved_by_success() -> None:
    clock = FakeClock()
    (s,) = states(1)
    assert failure_score(s, clock.now) == 0.0
    record_failure(s, "connect_failure", clock.now)
    record_failure(s, "connect_failure", clock.now)
    assert failure_score(s, clock.now) == pytest.approx(2.0)
    assert (s.last_failure, s.last_failure_at) == ("connect_failure", clock.now)
    clock.advance(PENALTY_DECAY)
    assert failure_score(s, clock.now) == pytest.approx(2.0 / 2.718281828, rel=1e-6)
    record_success(s, clock.now)
    assert failure_score(s, clock.now) == pytest.approx(1.0 / 2.718281828, rel=1e-6)
    clock.advance(PENALTY_DECAY * 10)
    assert failure_score(s, clock.now) == 0.0  # negligible scores are dropped


def test_ewma_failed_unknown_endpoint_costs_more_than_a_slow_known_one() -> None:
    clock = FakeClock()
    dead, slow = states(2)
    b = PeakEwmaBalancer(clock, random.Random(1))
    b.observe(slow, 0.100, clock.now, ok=True)
    record_failure(dead, "connect_failure", clock.now)
    b.observe(dead, 0.001, clock.now, ok=False)
    clock.advance(0.5)
    assert b.cost(dead, clock.now) > b.cost(slow, clock.now)
    assert all(b.pick([dead, slow]) is slow for _ in range(50))
    # Even once the dead one's latency estimate has decayed to nothing while unused.
    clock.advance(5.0)
    assert b.cost(dead, clock.now) > b.cost(slow, clock.now)


def test_ewma_penalty_wears_off_so_a_recovered_endpoint_is_tried_again() -> None:
    clock = FakeClock()
    was_dead, slow = states(2)
    b = PeakEwmaBalancer(clock, random.Random(2))
    b.observe(slow, 0.100, clock.now, ok=True)
    record_failure(was_dead, "reset", clock.now)
    clock.advance(PENALTY_DECAY * 6)
    b.observe(slow, 0.100, clock.now, ok=True)
    assert b.cost(was_dead, clock.now) < b.cost(slow, clock.now)


def test_least_request_counts_a_failed_endpoint_as_busy() -> None:
    clock = FakeClock()
    dead, busy = states(2)
    busy.inflight = 5
    record_failure(dead, "connect_failure", clock.now)
    b = LeastRequestBalancer(random.Random(3), clock)
    assert all(b.pick([dead, busy]) is busy for _ in range(50))
    busy.inflight = 0
    dead_clean, other = states(2)
    assert {b.pick([dead_clean, other]).endpoint.port for _ in range(50)} == {9000, 9001}
