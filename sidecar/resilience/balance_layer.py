"""The balance layer: pick an endpoint for this attempt, and learn from how it went.

Picks among the upstream's endpoints that are not ejected (the balancer avoids endpoints this
request already tried), keeps the in-flight count the balancers use, and feeds the attempt's
outcome and latency to the balancer (EWMA) and to outlier detection."""

from __future__ import annotations

from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster
from sidecar.clock import Clock
from sidecar.errors import NoHealthyEndpoints, SidecarError
from sidecar.events import Observer
from sidecar.http import Request, Response
from sidecar.resilience.classify import Outcome, classify_error, classify_status
from sidecar.resilience.outlier import OutlierDetector
from sidecar.stack import Handler


class BalanceLayer:
    def __init__(
        self,
        cluster: Cluster,
        balancer: Balancer,
        outlier: OutlierDetector,
        clock: Clock,
        observer: Observer,
    ) -> None:
        self._cluster = cluster
        self._balancer = balancer
        self._outlier = outlier
        self._clock = clock
        self._observer = observer

    def wrap(self, inner: Handler) -> Handler:
        cluster, balancer, outlier = self._cluster, self._balancer, self._outlier
        clock, observer = self._clock, self._observer

        async def balance(request: Request) -> Response:
            now = clock.monotonic()
            candidates = cluster.available(now)
            if not candidates:
                raise NoHealthyEndpoints(
                    f"no healthy endpoint for {request.upstream!r}"
                    + (" (all ejected)" if cluster.states else ""),
                    upstream=request.upstream,
                )
            state = balancer.pick(candidates, request.tried)
            request.endpoint = state.endpoint
            request.tried.append(state.endpoint)
            state.inflight += 1
            outcome = Outcome.LOCAL
            try:
                response = await inner(request)
                outcome = classify_status(response.status)
                return response
            except SidecarError as err:
                outcome = classify_error(err)
                raise
            finally:
                state.inflight -= 1
                end = clock.monotonic()
                if outcome is not Outcome.LOCAL:
                    failed = outcome.is_failure
                    balancer.observe(state, end - now, end, not failed)
                    if outlier.record(state, failed, end):
                        healthy, ejected = outlier.counts(end)
                        observer.endpoints(request.upstream, healthy, ejected)

        return balance
