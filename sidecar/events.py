"""The seam between the data-path policies and telemetry.

Resilience and discovery code reports what happened through this protocol; telemetry implements
it with Prometheus metrics (and span attributes). Policies never import prometheus-client, and
tests can pass `NullObserver` or a recording double."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def retry(self, upstream: str, reason: str) -> None:
        """A retry attempt is about to be made; `reason` is the failure class or status."""

    def retry_budget_exhausted(self, upstream: str) -> None: ...

    def breaker_state(self, upstream: str, state: str) -> None:
        """Breaker moved to `state` ("closed" | "half_open" | "open")."""

    def rejected(self, upstream: str, reason: str) -> None:
        """The sidecar answered itself without calling upstream: circuit_open, overloaded,
        no_route, no_healthy_endpoints, deadline_exceeded, bad_request."""

    def fallback(self, upstream: str, kind: str, reason: str) -> None:
        """A fallback reply was served; kind "static" | "last_good"."""

    def endpoints(self, upstream: str, healthy: int, ejected: int) -> None: ...

    def discovery_update(self, upstream: str, source: str, timestamp: float) -> None: ...

    def discovery_error(self, source: str) -> None: ...


class NullObserver:
    def retry(self, upstream: str, reason: str) -> None:
        pass

    def retry_budget_exhausted(self, upstream: str) -> None:
        pass

    def breaker_state(self, upstream: str, state: str) -> None:
        pass

    def rejected(self, upstream: str, reason: str) -> None:
        pass

    def fallback(self, upstream: str, kind: str, reason: str) -> None:
        pass

    def endpoints(self, upstream: str, healthy: int, ejected: int) -> None:
        pass

    def discovery_update(self, upstream: str, source: str, timestamp: float) -> None:
        pass

    def discovery_error(self, source: str) -> None:
        pass
