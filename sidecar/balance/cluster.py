"""Per-upstream endpoint state shared by the balancer, outlier detection, active health checks
and admin views."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidecar.discovery.endpoints import EndpointSet
from sidecar.vocab.endpoint import Endpoint


class PassiveState(enum.Enum):
    """What traffic says about an endpoint (outlier detection)."""

    HEALTHY = "healthy"
    EJECTED = "ejected"  # until `ejected_until`; ends by time alone
    PROBATION = "probation"  # ejection ended: one request at a time until one succeeds


class ActiveState(enum.Enum):
    """What active health checks say (UNKNOWN: not checked, or no verdict yet)."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(slots=True, eq=False)
class EndpointState:
    """Mutable statistics of one endpoint. Identity survives discovery updates that keep the
    endpoint, so EWMA and ejection history are not lost when another instance flaps."""

    endpoint: Endpoint
    inflight: int = 0
    ewma_rtt: float = 0.0  # seconds; 0 = no sample yet
    ewma_stamp: float = 0.0  # monotonic time of the last EWMA update
    consecutive_failures: int = 0  # any failure (consecutive_5xx)
    consecutive_local_failures: int = 0  # connect failure, reset, timeout
    consecutive_gateway_failures: int = 0  # local origin or 502/503/504
    ejected_until: float = 0.0  # monotonic; 0 = not ejected
    times_ejected: int = 0
    passive: PassiveState = PassiveState.HEALTHY
    active: ActiveState = ActiveState.UNKNOWN
    failure_score: float = 0.0  # decaying count of recent failures (balancer penalty)
    failure_stamp: float = 0.0  # monotonic time `failure_score` was last updated
    last_failure: str = ""  # Outcome value of the last failed attempt
    last_failure_at: float = 0.0  # monotonic

    def is_ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def is_available(self, now: float) -> bool:
        """Neither ejected by outlier detection nor failing its active health check."""
        return self.ejected_until <= now and self.active is not ActiveState.UNHEALTHY


class Cluster:
    """The endpoints of one upstream with their state (Envoy's "cluster")."""

    __slots__ = ("_by_endpoint", "active_down", "name", "source", "states")

    def __init__(self, name: str) -> None:
        self.name = name
        self.states: list[EndpointState] = []
        self.source = ""  # discovery source of the last snapshot
        # Endpoints the active checker holds out of rotation: lets the hot path know in O(1)
        # whether the endpoint list can be used as is.
        self.active_down = 0
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
        self.source = snapshot.source
        self.active_down = sum(1 for s in states if s.active is ActiveState.UNHEALTHY)

    def state_of(self, endpoint: Endpoint) -> EndpointState | None:
        return self._by_endpoint.get(endpoint)

    def set_active(self, state: EndpointState, active: ActiveState) -> None:
        """Record an active health verdict, keeping `active_down` in step."""
        if state.active is active:
            return
        was_down = state.active is ActiveState.UNHEALTHY
        state.active = active
        if self._by_endpoint.get(state.endpoint) is not state:
            return  # no longer in the cluster: not counted
        self.active_down += (active is ActiveState.UNHEALTHY) - was_down

    def available(self, now: float) -> list[EndpointState]:
        """Endpoints neither ejected nor held out by active health checks."""
        return [s for s in self.states if s.is_available(now)]
