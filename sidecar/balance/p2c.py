"""Power-of-two-choices balancers: least_request and peak-EWMA (linkerd2-proxy / Finagle).

Both pick two random candidates and keep the cheaper one, so a pick costs the same for 3 or
1 000 endpoints. Peak-EWMA's cost is `rtt_estimate * (inflight + 1)`, where the estimate jumps
up to a slow sample at once (the "peak") and decays towards faster ones with time constant
`decay`; endpoints without a sample get a penalty so they are tried but not flooded."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.discovery.endpoints import Endpoint


def _two(
    candidates: Sequence[EndpointState], avoid: Collection[Endpoint], rng: random.Random
) -> tuple[EndpointState, EndpointState]:
    """Two distinct random candidates, preferring ones not in `avoid`; O(1) in len()."""
    n = len(candidates)
    if n == 1:
        return candidates[0], candidates[0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    if avoid:
        for _ in range(3):
            if a.endpoint not in avoid:
                break
            a = candidates[rng.randrange(n)]
        for _ in range(3):
            if b.endpoint not in avoid and b is not a:
                break
            b = candidates[rng.randrange(n)]
    return a, b


class RandomBalancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = _two(candidates, avoid, self._rng)
        return b if a.endpoint in avoid and b.endpoint not in avoid else a

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass


class LeastRequestBalancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = _two(candidates, avoid, self._rng)
        if (a.endpoint in avoid) != (b.endpoint in avoid):
            return b if a.endpoint in avoid else a
        return a if a.inflight <= b.inflight else b

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass


class PeakEwmaBalancer:
    def __init__(
        self,
        decay: float = 10.0,
        default_rtt: float = 0.030,
        rng: random.Random | None = None,
    ) -> None:
        self._decay = decay
        self._default = default_rtt
        self._rng = rng or random.Random()

    def cost(self, st: EndpointState) -> float:
        rtt = st.ewma_rtt if st.ewma_rtt > 0 else self._default
        return rtt * (st.inflight + 1)

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        a, b = _two(candidates, avoid, self._rng)
        if (a.endpoint in avoid) != (b.endpoint in avoid):
            return b if a.endpoint in avoid else a
        return a if self.cost(a) <= self.cost(b) else b

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        if not ok:
            # A failure is as bad as a slow answer: don't let fast errors attract traffic.
            rtt = max(rtt, state.ewma_rtt, self._default) * 2
        if state.ewma_rtt <= 0 or rtt > state.ewma_rtt:
            state.ewma_rtt = rtt  # peak: jump up at once
        else:
            elapsed = max(now - state.ewma_stamp, 0.0)
            w = math.exp(-elapsed / self._decay)
            state.ewma_rtt = state.ewma_rtt * w + rtt * (1 - w)
        state.ewma_stamp = now
