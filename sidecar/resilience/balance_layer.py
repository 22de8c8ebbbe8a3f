"""The balance layer: choose this attempt's endpoint and feed back what happened.

Per attempt (it sits inside the retry layer): pick among the cluster's non-ejected endpoints,
preferring ones this request has not tried; count it in flight until response headers; then
give the balancer the RTT (for EWMA) and the outlier detector the classified outcome."""

from __future__ import annotations

import time

from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster
from sidecar.clock import Clock
from sidecar.errors import NoHealthyEndpoints, SidecarError
from sidecar.events import NullObserver, Observer
from sidecar.http import Request, Response
from sidecar.resilience.classify import Outcome, classify_error, classify_response
from sidecar.resilience.deadline import arriving
from sidecar.resilience.outlier import OutlierDetector
from sidecar.stack import Handler


class BalanceLayer:
    __slots__ = ("_balancer", "_clock", "_cluster", "_observer", "_outlier")

    def __init__(
        self,
        cluster: Cluster,
        balancer: Balancer,
        clock: Clock,
        outlier: OutlierDetector | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._cluster = cluster
        self._balancer = balancer
        self._clock = clock
        self._outlier = outlier
        self._observer: Observer = observer or NullObserver()

    def wrap(self, inner: Handler) -> Handler:
        cluster, balancer, clock = self._cluster, self._balancer, self._clock
        outlier, observer = self._outlier, self._observer

        async def balance(request: Request) -> Response:
            start = clock.monotonic()
            # Common case: nothing ejected, so the cluster's own list serves as is (no copy).
            if outlier is not None and outlier.any_ejected(start):
                candidates = cluster.available(start)
            else:
                candidates = cluster.states
            if not candidates:
                observer.rejected(cluster.name, "no_healthy_endpoints")
                raise NoHealthyEndpoints(
                    f"no healthy endpoint for {cluster.name!r}", upstream=cluster.name
                )
            state = balancer.pick(candidates, request.tried)
            request.endpoint = state.endpoint
            request.tried.append(state.endpoint)
            state.inflight += 1
            # A body still arriving: the client's share of this try is not the endpoint's.
            body = arriving(request.body)
            since = 0.0 if body is None else time.monotonic()
            outcome = Outcome.CANCELLED
            try:
                response = await inner(request)
                outcome = classify_response(response.status)
                return response
            except SidecarError as exc:
                outcome = classify_error(exc)
                raise
            finally:
                state.inflight -= 1
                now = clock.monotonic()
                rtt = now - start
                if body is not None:
                    if body.received_at:
                        # The endpoint's time began when it could have the whole request.
                        rtt = max(0.0, rtt - (body.received_at - since))
                    elif outcome is Outcome.CANCELLED and not body.throttled:
                        outcome = Outcome.LOCAL  # cut short waiting on the client (408)
                if outcome is not Outcome.LOCAL and outcome is not Outcome.INTERNAL:
                    # A cancelled try (per-try timeout or caller gone) still tells us the
                    # endpoint took at least `rtt`; feed it as a failed sample.
                    balancer.observe(state, rtt, now, outcome is Outcome.SUCCESS)
                if outlier is not None:
                    outlier.record(state, outcome, now)

        return balance
