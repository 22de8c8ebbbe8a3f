"""Outlier ejection per endpoint (Envoy's outlier detection, "consecutive 5xx").

An endpoint that fails `consecutive_5xx` times in a row (5xx, connect failure, reset, timeout)
is ejected for `base_ejection * times_ejected`; a success resets its run. Never more than
`max_ejection_percent` of an upstream's endpoints are ejected at once (at least one may be,
so a two-endpoint upstream can still shed its bad half)."""

from __future__ import annotations

from sidecar.balance.cluster import Cluster, EndpointState
from sidecar.config import OutlierDetectionConfig


class OutlierDetector:
    def __init__(self, config: OutlierDetectionConfig, cluster: Cluster) -> None:
        self._cfg = config
        self._cluster = cluster

    def record(self, state: EndpointState, failed: bool, now: float) -> bool:
        """Feed one outcome; returns True if this call ejected the endpoint."""
        if not self._cfg.enabled:
            return False
        if not failed:
            state.consecutive_failures = 0
            return False
        state.consecutive_failures += 1
        if state.consecutive_failures < self._cfg.consecutive_5xx or state.is_ejected(now):
            return False
        total = len(self._cluster.states)
        ejected = sum(1 for s in self._cluster.states if s.is_ejected(now))
        allowed = max(1, total * self._cfg.max_ejection_percent // 100)
        if self._cfg.max_ejection_percent == 0 or ejected + 1 > allowed or total <= 1:
            return False
        state.times_ejected += 1
        state.ejected_until = now + self._cfg.base_ejection * state.times_ejected
        state.consecutive_failures = 0
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """(healthy, ejected) endpoint counts."""
        ejected = sum(1 for s in self._cluster.states if s.is_ejected(now))
        return len(self._cluster.states) - ejected, ejected
