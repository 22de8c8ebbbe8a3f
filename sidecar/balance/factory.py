"""Build the balancer an upstream's `load_balancer` names."""

from __future__ import annotations

import random

from sidecar.balance.base import Balancer
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.least_request import LeastRequestBalancer
from sidecar.balance.random import RandomBalancer
from sidecar.balance.round_robin import RoundRobinBalancer
from sidecar.clock import Clock
from sidecar.vocab.names import BALANCERS


def make_balancer(
    name: str, clock: Clock | None = None, rng: random.Random | None = None
) -> Balancer:
    """One balancer per upstream (balancers keep per-upstream state such as the RR cursor)."""
    if name == "round_robin":
        return RoundRobinBalancer()
    if name == "random":
        return RandomBalancer(rng)
    if name == "least_request":
        return LeastRequestBalancer(rng, clock)
    if name == "ewma":
        return PeakEwmaBalancer(clock, rng)
    raise ValueError(f"unknown load balancer {name!r}: expected one of {', '.join(BALANCERS)}")
