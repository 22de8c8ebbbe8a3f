"""Round robin."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.vocab.endpoint import Endpoint


class RoundRobinBalancer:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        n = len(candidates)
        first = self._next % n
        # At most len(avoid) candidates are avoided, so len(avoid) + 1 steps find one that is
        # not, if any exists: bounded by the retry count, not the cluster size.
        for k in range(min(n, len(avoid) + 1) if avoid else 1):
            i = (first + k) % n
            st = candidates[i]
            if st.endpoint not in avoid:
                self._next = i + 1
                return st
        self._next = first + 1
        return candidates[first]

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        pass
