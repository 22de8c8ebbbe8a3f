"""Least request by the power of two choices (Envoy's LEAST_REQUEST, Mitzenmacher's P2C):
sample two endpoints at random, take the one with fewer requests in flight. O(1) per pick,
and avoids the herd effect of always picking the global minimum. An endpoint that failed
lately counts as busier than it is (`sidecar.balance.penalty`): a dead one has nothing in
flight and would otherwise win every comparison."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.balance.penalty import FAILURE_LOAD, failure_score
from sidecar.balance.sampling import pick_two
from sidecar.clock import Clock, SystemClock
from sidecar.vocab.endpoint import Endpoint


class LeastRequestBalancer:
    __slots__ = ("_clock", "_rng")

    def __init__(self, rng: random.Random | None = None, clock: Clock | None = None) -> None:
        self._rng = rng or random.Random()
        self._clock: Clock = clock or SystemClock()

    def cost(self, state: EndpointState, now: float) -> float:
        load = float(state.inflight)
        if state.failure_score != 0.0:
            load += FAILURE_LOAD * failure_score(state, now)
        return load

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = pick_two(candidates, avoid, self._rng)
        if a is b:
            return a
        if a.failure_score == 0.0 and b.failure_score == 0.0:
            return b if b.inflight < a.inflight else a
        now = self._clock.monotonic()
        return b if self.cost(b, now) < self.cost(a, now) else a

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass
