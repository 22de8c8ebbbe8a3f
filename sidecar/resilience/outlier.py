"""Outlier detection per endpoint (Envoy's consecutive-5xx ejection). Pure: time is passed in
(`now`, from the injected clock of the caller).

`consecutive_5xx` failures in a row (5xx, connect failure, reset, timeout: Envoy maps local
origin errors to 5xx by default) eject the endpoint for `base_ejection * times_ejected`, capped
at `max_ejection`. As in Envoy, an endpoint is ejected if none is ejected yet, otherwise only if
the ejected share stays within `max_ejection_percent`; so at least one endpoint can always be
ejected. Ejection ends by time alone (no timer task): the balancer skips endpoints whose
`ejected_until` is in the future. An endpoint that stays healthy for a base period after
returning has its ejection multiplier lowered by one, as Envoy does."""

from __future__ import annotations

import math
from typing import Any

from sidecar.balance.cluster import Cluster, EndpointState
from sidecar.config import OutlierDetectionConfig
from sidecar.events import NullObserver, Observer
from sidecar.resilience.classify import Outcome

DEFAULT_MAX_EJECTION = 300.0  # Envoy's max_ejection_time default


class OutlierDetector:
    __slots__ = ("_base", "_cluster", "_config", "_max", "_next_change", "_observer")

    def __init__(
        self,
        config: OutlierDetectionConfig,
        cluster: Cluster,
        observer: Observer | None = None,
        max_ejection: float = DEFAULT_MAX_EJECTION,
    ) -> None:
        self._config = config
        self._cluster = cluster
        self._observer: Observer = observer or NullObserver()
        self._base = config.base_ejection
        self._max = max(max_ejection, config.base_ejection)
        # The earliest time an ejection ends (inf: none active). Lets the hot path know in O(1)
        # that nothing is ejected and the cluster's endpoint list can be used as is.
        self._next_change = math.inf

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    def any_ejected(self, now: float) -> bool:
        """True if some endpoint may still be ejected at `now` (O(1) amortised)."""
        if now < self._next_change:
            return self._next_change != math.inf
        self._recount(now)
        return self._next_change != math.inf

    def record(self, state: EndpointState, outcome: Outcome, now: float) -> None:
        if not self._config.enabled:
            return
        if outcome is Outcome.SUCCESS:
            state.consecutive_failures = 0
            # Healthy for a whole base period since it came back: lower the multiplier.
            if state.times_ejected and now >= state.ejected_until + self._base:
                state.times_ejected -= 1
                state.ejected_until += self._base
            return
        if not outcome.is_failure or state.is_ejected(now):
            return
        state.consecutive_failures += 1
        if state.consecutive_failures >= self._config.consecutive_5xx:
            self._try_eject(state, now)

    def _try_eject(self, state: EndpointState, now: float) -> None:
        states = self._cluster.states
        ejected = sum(1 for s in states if s.is_ejected(now))
        if ejected and 100.0 * (ejected + 1) / len(states) > self._config.max_ejection_percent:
            return  # keep counting; it is ejected once the share allows
        state.times_ejected += 1
        state.consecutive_failures = 0
        state.ejected_until = now + min(self._max, self._base * state.times_ejected)
        self._next_change = min(self._next_change, state.ejected_until)
        self._observer.endpoints(self._cluster.name, len(states) - ejected - 1, ejected + 1)

    def _recount(self, now: float) -> None:
        """An ejection has ended: find the next one to end and report the new counts."""
        states = self._cluster.states
        nxt = math.inf
        ejected = 0
        for s in states:
            if s.ejected_until > now:
                ejected += 1
                nxt = min(nxt, s.ejected_until)
        self._next_change = nxt
        self._observer.endpoints(self._cluster.name, len(states) - ejected, ejected)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Per endpoint, for /admin/endpoints."""
        return [
            {
                "address": s.endpoint.address,
                "ejected": s.is_ejected(now),
                "ejected_for_s": round(max(0.0, s.ejected_until - now), 3),
                "times_ejected": s.times_ejected,
                "consecutive_failures": s.consecutive_failures,
                "inflight": s.inflight,
                "ewma_rtt_ms": round(s.ewma_rtt * 1000, 3),
            }
            for s in self._cluster.states
        ]

