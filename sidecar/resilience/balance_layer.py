"""The balance filter: choose this attempt's endpoint and feed back what happened.

Per attempt (one of the router's per-attempt filters): pick among the cluster's available endpoints
(not ejected, not failing an active health check), preferring ones this request has not tried;
count it in flight until response headers; then give the balancer the RTT (for EWMA), the
endpoint its failure penalty (`sidecar.balance.penalty`) and the outlier detector the
classified outcome. An endpoint on probation after an ejection gets one request at a time."""

from __future__ import annotations

import asyncio
import math
import time

from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster, EndpointState, PassiveState
from sidecar.balance.penalty import record_failure, record_success
from sidecar.clock import Clock
from sidecar.errors import NoHealthyEndpoints, SidecarError
from sidecar.events import NullObserver, Observer
from sidecar.http import Request, Response
from sidecar.resilience.classify import Outcome, classify_error, classify_reply
from sidecar.resilience.deadline import ArrivingBody, arriving
from sidecar.resilience.outlier import OutlierDetector
from sidecar.stack import Exchange, Filter, Handler, alone

# A cancellation this close to the attempt's time limit is the per-try timeout firing.
_TIMEOUT_SLACK = 0.002


class BalanceLayer(Filter):
    __slots__ = ("_balancer", "_clock", "_cluster", "_observer", "_outlier", "_per_try")

    def __init__(
        self,
        cluster: Cluster,
        balancer: Balancer,
        clock: Clock,
        outlier: OutlierDetector | None = None,
        observer: Observer | None = None,
        per_try_timeout: float = math.inf,
    ) -> None:
        self._cluster = cluster
        self._balancer = balancer
        self._clock = clock
        self._outlier = outlier
        self._observer: Observer = observer or NullObserver()
        self._per_try = per_try_timeout

    def _repick(
        self, candidates: list[EndpointState], request: Request, state: EndpointState
    ) -> EndpointState:
        """`state` is on probation and its one probe is already out: pick another (rare;
        allocates). Bounded; if every try lands on a busy probationer, it gets the request
        anyway rather than failing it."""
        avoid = [*request.tried]
        for _ in range(3):
            avoid.append(state.endpoint)
            state = self._balancer.pick(candidates, avoid)
            if state.passive is not PassiveState.PROBATION or not state.inflight:
                break
        return state

    # ---------------------------------------------------------------- filter hooks
    def on_request(self, x: Exchange) -> Response | None:
        cluster, outlier, request = self._cluster, self._outlier, x.request
        start = self._clock.monotonic()
        # Common case: nothing ejected or held out, so the cluster's own list serves as
        # is (no copy).
        if cluster.active_down or (outlier is not None and outlier.any_ejected(start)):
            candidates = cluster.available(start)
        else:
            candidates = cluster.states
        if not candidates:
            self._observer.rejected(cluster.name, "no_healthy_endpoints")
            raise NoHealthyEndpoints(
                f"no healthy endpoint for {cluster.name!r}", upstream=cluster.name
            )
        state = self._balancer.pick(candidates, request.tried)
        if state.passive is PassiveState.PROBATION and state.inflight:
            state = self._repick(candidates, request, state)
        request.endpoint = state.endpoint
        request.tried.append(state.endpoint)
        state.inflight += 1
        # A body still arriving: the client's share of this try is not the endpoint's.
        body = arriving(request.body)
        x.picked = state
        x.try_start = start
        x.body = body
        x.since = 0.0 if body is None else time.monotonic()
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        self._feedback(x, classify_reply(response), response.status)
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        if isinstance(exc, SidecarError):
            outcome = classify_error(exc)
        elif isinstance(exc, asyncio.CancelledError):
            outcome = self._cancelled(x)
        else:
            outcome = Outcome.CANCELLED
        self._feedback(x, outcome, 0)
        return None

    def _cancelled(self, x: Exchange) -> Outcome:
        """The retry stage's per-try timer cancels the attempt: that is a timeout (the
        endpoint did not answer in time), unlike a caller going away."""
        request, start = x.request, x.try_start
        body: ArrivingBody | None = x.body
        limit = self._per_try
        if request.deadline is not None:
            limit = min(limit, request.deadline - start)
        waited = self._clock.monotonic() - start
        if body is not None:
            # The timers start once the body is in: the client's share is not the
            # endpoint's, and a body still arriving is decided below (408 or not).
            waited = waited - (body.received_at - x.since) if body.received_at else -1.0
        return Outcome.TIMEOUT if waited >= limit - _TIMEOUT_SLACK else Outcome.CANCELLED

    def _feedback(self, x: Exchange, outcome: Outcome, status: int) -> None:
        state: EndpointState = x.picked
        body: ArrivingBody | None = x.body
        balancer, outlier = self._balancer, self._outlier
        state.inflight -= 1
        now = self._clock.monotonic()
        rtt = now - x.try_start
        if body is not None:
            if body.received_at:
                # The endpoint's time began when it could have the whole request.
                rtt = max(0.0, rtt - (body.received_at - x.since))
            elif outcome is Outcome.CANCELLED and not body.throttled:
                outcome = Outcome.LOCAL  # cut short waiting on the client (408)
        if outcome is Outcome.SUCCESS:
            balancer.observe(state, rtt, now, True)
            if state.failure_score != 0.0:
                record_success(state, now)
        elif outcome is not Outcome.LOCAL and outcome is not Outcome.INTERNAL:
            # A cancelled try (caller gone) still tells us the endpoint took at
            # least `rtt`; feed it as a failed sample.
            balancer.observe(state, rtt, now, False)
            if outcome.is_failure:
                record_failure(state, outcome.value, now)
        if outlier is not None:
            outlier.record(state, outcome, now, status)

    def wrap(self, inner: Handler) -> Handler:
        return alone(self, inner)
