"""Least request by the power of two choices (Envoy's LEAST_REQUEST, Mitzenmacher's P2C):
sample two endpoints at random, take the one with fewer requests in flight. O(1) per pick,
and avoids the herd effect of always picking the global minimum."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.balance.sampling import pick_two
from sidecar.discovery.endpoints import Endpoint


class LeastRequestBalancer:
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = pick_two(candidates, avoid, self._rng)
        return b if b.inflight < a.inflight else a

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass
