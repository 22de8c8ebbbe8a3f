"""Build a balancer from its config name."""

from __future__ import annotations

from sidecar.balance.base import Balancer
from sidecar.balance.p2c import LeastRequestBalancer, PeakEwmaBalancer, RandomBalancer
from sidecar.balance.round_robin import RoundRobinBalancer


def make_balancer(name: str) -> Balancer:
    if name == "round_robin":
        return RoundRobinBalancer()
    if name == "random":
        return RandomBalancer()
    if name == "least_request":
        return LeastRequestBalancer()
    if name == "ewma":
        return PeakEwmaBalancer()
    raise ValueError(f"unknown load balancer {name!r}")
