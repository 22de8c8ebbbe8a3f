"""Round robin."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.discovery.endpoints import Endpoint


class RoundRobinBalancer:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        n = len(candidates)
        for _ in range(min(n, 2) if avoid else 1):
            i = self._next % n
            self._next = i + 1
            st = candidates[i]
            if st.endpoint not in avoid:
                return st
        return candidates[self._next % n]

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass
