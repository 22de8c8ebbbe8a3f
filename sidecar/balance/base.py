"""The Balancer seam."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from sidecar.balance.cluster import EndpointState
from sidecar.vocab.endpoint import Endpoint


class Balancer(Protocol):
    def pick(
        self, candidates: Sequence[EndpointState], avoid: Collection[Endpoint] = ()
    ) -> EndpointState:
        """Choose one of `candidates` (non-empty). Never an endpoint in `avoid` (those
        already tried by this request) while a candidate not in it exists. Must cost O(1) in
        len(candidates)."""
        ...

    def observe(self, state: EndpointState, rtt: float, now: float, ok: bool) -> None:
        """Feedback after an attempt (EWMA uses it; others may ignore it)."""
        ...
