"""Peak-EWMA (linkerd2-proxy / tower / Finagle): P2C on the cost
`rtt_estimate * (inflight + 1)`.

The estimate is peak-sensitive: a slower sample replaces it at once; a faster one blends in
with weight `1 - exp(-elapsed / decay)` (elapsed since the last update). While an endpoint is
not used its estimate decays towards zero when read, so a once-slow endpoint is probed again
after a few decay periods instead of being starved forever. Endpoints without a sample cost
`default_rtt`. Failed attempts never make an endpoint look faster than it was estimated (the
sample is max(rtt, estimate)), and recent failures add a decaying penalty to the cost
(`sidecar.balance.penalty`): a fast-failing endpoint, or one that is unknown again after a
failure, must not look cheaper than a known-good one."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.balance.penalty import FAILURE_COST, failure_score
from sidecar.balance.sampling import pick_two
from sidecar.clock import Clock, SystemClock
from sidecar.vocab.endpoint import Endpoint

DEFAULT_RTT = 0.030  # linkerd2-proxy's default estimate before the first sample
DEFAULT_DECAY = 10.0  # linkerd2-proxy's decay time constant (seconds)


class PeakEwmaBalancer:
    __slots__ = ("_clock", "_decay", "_default_rtt", "_rng")

    def __init__(
        self,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._default_rtt = default_rtt
        self._decay = decay

    def estimate(self, state: EndpointState, now: float) -> float:
        if state.ewma_stamp == 0.0 and state.ewma_rtt == 0.0:
            return self._default_rtt
        idle = now - state.ewma_stamp
        if idle <= 0.0:
            return state.ewma_rtt
        return state.ewma_rtt * math.exp(-idle / self._decay)

    def cost(self, state: EndpointState, now: float) -> float:
        cost = self.estimate(state, now) * (state.inflight + 1)
        if state.failure_score != 0.0:
            cost += FAILURE_COST * failure_score(state, now)
        return cost

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = pick_two(candidates, avoid, self._rng)
        if a is b:
            return a
        now = self._clock.monotonic()
        return b if self.cost(b, now) < self.cost(a, now) else a

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        if state.ewma_stamp == 0.0 and state.ewma_rtt == 0.0:
            state.ewma_rtt = rtt if ok else max(rtt, self._default_rtt)
            state.ewma_stamp = now
            return
        current = self.estimate(state, now)
        if not ok:
            rtt = max(rtt, current)
        if rtt > current:
            state.ewma_rtt = rtt
        else:
            elapsed = max(0.0, now - state.ewma_stamp)
            w = math.exp(-elapsed / self._decay)
            state.ewma_rtt = current * w + rtt * (1.0 - w)
        state.ewma_stamp = now
