"""Uniform random choice."""

from __future__ import annotations

import random as _random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.balance.sampling import pick_index
from sidecar.vocab.endpoint import Endpoint


class RandomBalancer:
    __slots__ = ("_rng",)

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        return candidates[pick_index(candidates, avoid, self._rng)]

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass
