"""Per-upstream endpoint state shared by the balancer, outlier detection and admin views."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.discovery.endpoints import Endpoint, EndpointSet


@dataclass(slots=True, eq=False)
class EndpointState:
    """Mutable statistics of one endpoint. Identity survives discovery updates that keep the
    endpoint, so EWMA and ejection history are not lost when another instance flaps."""

    endpoint: Endpoint
    inflight: int = 0
    ewma_rtt: float = 0.0  # seconds; 0 = no sample yet
    ewma_stamp: float = 0.0  # monotonic time of the last EWMA update
    consecutive_failures: int = 0
    ejected_until: float = 0.0  # monotonic; 0 = not ejected
    times_ejected: int = 0

    def is_ejected(self, now: float) -> bool:
        return self.ejected_until > now


class Cluster:
    """The endpoints of one upstream with their state (Envoy's "cluster")."""

    __slots__ = ("_by_endpoint", "name", "states")

    def __init__(self, name: str) -> None:
        self.name = name
        self.states: list[EndpointState] = []
        self._by_endpoint: dict[Endpoint, EndpointState] = {}

    def update(self, snapshot: EndpointSet) -> None:
        by_endpoint = {}
        states = []
        for ep in snapshot.endpoints:
            st = self._by_endpoint.get(ep) or EndpointState(ep)
            by_endpoint[ep] = st
            states.append(st)
        self._by_endpoint = by_endpoint
        self.states = states

    def available(self, now: float) -> list[EndpointState]:
        """Endpoints not currently ejected."""
        return [s for s in self.states if not s.is_ejected(now)]
