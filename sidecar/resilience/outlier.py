"""Outlier detection per endpoint (Envoy's consecutive-failure ejection, with linkerd's
probation on return). Pure: time is passed in (`now`, from the injected clock of the caller).

Three counters of failures in a row, each ejecting when it reaches its threshold (0 = off):
- `consecutive_5xx`: any failure (5xx, connect failure, reset, timeout; Envoy maps local
  origin errors to 5xx by default);
- `consecutive_local_origin_failure`: failures without an HTTP answer (connect failure,
  reset, timeout), so a dead replica goes sooner than one answering 5xx;
- `consecutive_gateway_failure`: local origin failures or 502/503/504.
A success resets all three. Ejection lasts `base_ejection * times_ejected`, capped at
`max_ejection`. As in Envoy, an endpoint is ejected if none is ejected yet, otherwise only if
the ejected share stays within `max_ejection_percent`; so at least one endpoint can always be
ejected. Ejection ends by time alone (no timer task): the balancer skips endpoints whose
`ejected_until` is in the future. A returning endpoint is on PROBATION: the balance layer gives
it one request at a time; a success puts it back in rotation, a failure ejects it again at
once (for longer), so a dead endpoint costs one request per ejection period, not a burst. An
endpoint that stays healthy for a base period after returning has its ejection multiplier
lowered by one, as Envoy does. Transitions are logged at info, rate-limited."""

from __future__ import annotations

import logging
import math

from sidecar.balance.cluster import Cluster, EndpointState, PassiveState
from sidecar.config import OutlierDetectionConfig
from sidecar.events import NullObserver, Observer
from sidecar.resilience.classify import Outcome
from sidecar.resilience.log_limit import LogLimiter

DEFAULT_MAX_EJECTION = 300.0  # Envoy's max_ejection_time default
GATEWAY_STATUSES = frozenset({502, 503, 504})
_LOCAL_ORIGIN = frozenset({Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT})

log = logging.getLogger(__name__)


class OutlierDetector:
    __slots__ = (
        "_base",
        "_cluster",
        "_config",
        "_log",
        "_max",
        "_next_change",
        "_observer",
    )

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
        self._log = LogLimiter()
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

    def record(self, state: EndpointState, outcome: Outcome, now: float, status: int = 0) -> None:
        """The outcome of one attempt to `state` (`status`: the response's, 0 without one)."""
        if not self._config.enabled:
            return
        passive = state.passive
        if passive is PassiveState.EJECTED and not state.is_ejected(now):
            passive = state.passive = PassiveState.PROBATION
        if outcome is Outcome.SUCCESS:
            if state.consecutive_failures:
                state.consecutive_failures = 0
                state.consecutive_local_failures = 0
                state.consecutive_gateway_failures = 0
            if passive is PassiveState.PROBATION:
                state.passive = PassiveState.HEALTHY
                self._log.info(
                    log,
                    now,
                    "upstream %s: endpoint %s is back in rotation (its probe request succeeded)",
                    self._cluster.name,
                    state.endpoint.address,
                )
            # Healthy for a whole base period since it came back: lower the multiplier.
            if state.times_ejected and now >= state.ejected_until + self._base:
                state.times_ejected -= 1
                state.ejected_until += self._base
            return
        if not outcome.is_failure or passive is PassiveState.EJECTED:
            return
        if passive is PassiveState.PROBATION:
            self._try_eject(state, now, "its probe request failed: " + outcome.value)
            return
        cfg = self._config
        state.consecutive_failures += 1
        local = outcome in _LOCAL_ORIGIN
        if local:
            state.consecutive_local_failures += 1
        else:
            state.consecutive_local_failures = 0
        if local or status in GATEWAY_STATUSES:
            state.consecutive_gateway_failures += 1
        else:
            state.consecutive_gateway_failures = 0
        if state.consecutive_failures >= cfg.consecutive_5xx:
            reason = f"{state.consecutive_failures} consecutive failures"
        elif 0 < cfg.consecutive_local_origin_failure <= state.consecutive_local_failures:
            reason = f"{state.consecutive_local_failures} consecutive local origin failures"
        elif 0 < cfg.consecutive_gateway_failure <= state.consecutive_gateway_failures:
            reason = f"{state.consecutive_gateway_failures} consecutive gateway failures"
        else:
            return
        self._try_eject(state, now, f"{reason}, last: {outcome.value}")

    def _try_eject(self, state: EndpointState, now: float, reason: str) -> None:
        states = self._cluster.states
        ejected = sum(1 for s in states if s.is_ejected(now))
        if ejected and 100.0 * (ejected + 1) / len(states) > self._config.max_ejection_percent:
            return  # keep counting; it is ejected once the share allows
        state.times_ejected += 1
        state.consecutive_failures = 0
        state.consecutive_local_failures = 0
        state.consecutive_gateway_failures = 0
        duration = min(self._max, self._base * state.times_ejected)
        state.ejected_until = now + duration
        state.passive = PassiveState.EJECTED
        self._next_change = min(self._next_change, state.ejected_until)
        self._observer.endpoints(self._cluster.name, len(states) - ejected - 1, ejected + 1)
        self._log.info(
            log,
            now,
            "upstream %s: endpoint %s ejected for %.0fs (%s); %d of %d endpoints ejected",
            self._cluster.name,
            state.endpoint.address,
            duration,
            reason,
            ejected + 1,
            len(states),
        )

    def _recount(self, now: float) -> None:
        """An ejection has ended: find the next one to end and report the new counts."""
        states = self._cluster.states
        nxt = math.inf
        ejected = 0
        for s in states:
            if s.ejected_until > now:
                ejected += 1
                nxt = min(nxt, s.ejected_until)
            elif s.passive is PassiveState.EJECTED:
                s.passive = PassiveState.PROBATION
                log.debug(
                    "upstream %s: ejection of %s ended; probing it with one request",
                    self._cluster.name,
                    s.endpoint.address,
                )
        self._next_change = nxt
        self._observer.endpoints(self._cluster.name, len(states) - ejected, ejected)
