"""Picking costs O(1) in the number of endpoints: time per pick for 3 and for 1000 endpoints
stays within a generous factor (the machine is shared; the bound only catches O(n) work)."""

import random
import time
from collections.abc import Callable

import pytest

from sidecar.balance.cluster import Cluster
from sidecar.balance.factory import make_balancer
from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import FakeClock


def picker(name: str, n: int) -> Callable[[int], float]:
    c = Cluster("svc")
    c.update(EndpointSet("svc", tuple(Endpoint("10.0.0.1", 1000 + i) for i in range(n)), "s", 0))
    b = make_balancer(name, FakeClock(), random.Random(1))
    states = c.states
    avoid = [states[0].endpoint]

    def run(picks: int) -> float:
        t0 = time.perf_counter()
        for _ in range(picks):
            b.pick(states, avoid)
        return (time.perf_counter() - t0) / picks

    return run


@pytest.mark.parametrize("name", ["round_robin", "random", "least_request", "ewma"])
def test_pick_cost_is_flat_from_3_to_1000_endpoints(name: str) -> None:
    small, large = picker(name, 3), picker(name, 1000)
    # Interleaved rounds, best of each: a burst of load from another process hits both sizes.
    best_small = best_large = float("inf")
    for _ in range(5):
        best_small = min(best_small, small(10000))
        best_large = min(best_large, large(10000))
    # An O(n) pick would be ~300x slower at 1000; allow 4x for noise and cache effects.
    assert best_large < best_small * 4, (best_small, best_large)
