"""The per-upstream layers composed as app.py composes them, over a scripted upstream."""

import random

from sidecar.balance.cluster import Cluster
from sidecar.balance.factory import make_balancer
from sidecar.config import LimitsConfig, UpstreamConfig
from sidecar.discovery.endpoints import EndpointSet
from sidecar.errors import SidecarError
from sidecar.http import Request, Response
from sidecar.resilience.balance_layer import BalanceLayer
from sidecar.resilience.breaker import CircuitBreakerLayer, breaker_for
from sidecar.resilience.concurrency import ConcurrencyLimitLayer
from sidecar.resilience.deadline import DeadlineLayer
from sidecar.resilience.fallback import FallbackLayer
from sidecar.resilience.outlier import OutlierDetector
from sidecar.resilience.retry import RetryLayer
from sidecar.stack import Handler, compose
from sidecar.vocab.endpoint import Endpoint
from sidecar.vocab.headers import EXPECTED_TIMEOUT_HEADER
from tests.unit.resilience.fakes import FakeClock, RecordingObserver, make_request, response


async def _no_sleep(delay: float) -> None:
    pass


def build(
    policy: UpstreamConfig,
    cluster: Cluster,
    clock: FakeClock,
    obs: RecordingObserver,
    terminal: Handler,
) -> Handler:
    name = cluster.name
    limits = LimitsConfig()
    return compose(
        [
            ConcurrencyLimitLayer(name, policy.max_concurrent_requests, obs),
            FallbackLayer(name, policy.fallback, clock, obs),
            DeadlineLayer(policy.timeouts.total, clock, obs),
            CircuitBreakerLayer(name, breaker_for(name, policy.circuit_breaker, clock, obs), obs),
            RetryLayer(
                name,
                policy.retries,
                policy.timeouts.per_try,
                limits.retry_buffer_bytes,
                clock,
                obs,
                sleep=_no_sleep,
                rng=random.Random(1),
            ),
            BalanceLayer(
                cluster,
                make_balancer(policy.load_balancer, clock, random.Random(2)),
                clock,
                OutlierDetector(policy.outlier_detection, cluster, obs),
                obs,
            ),
        ],
        terminal=terminal,
    )


async def test_failing_upstream_trips_breaker_then_gets_no_traffic_and_fallback_serves() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    cluster = Cluster("svc")
    cluster.update(EndpointSet("svc", (Endpoint("10.0.0.1", 1), Endpoint("10.0.0.1", 2)), "s", 0))
    policy = UpstreamConfig(fallback={"static": {"status": 200, "body": "{}"}})  # type: ignore[arg-type]
    calls: list[Request] = []

    async def always_503(request: Request) -> Response:
        calls.append(request)
        clock.advance(0.01)
        return response(503)

    handler = build(policy, cluster, clock, obs, always_503)
    statuses = []
    for _ in range(40):
        statuses.append((await handler(make_request())).status)
    made = len(calls)
    assert obs.of("breaker_state")[0] == ("breaker_state", "svc", "open")
    for _ in range(20):
        resp = await handler(make_request())
        assert resp.headers.get("x-sidecar-fallback") == "static"
    assert len(calls) == made  # open: the upstream sees nothing
    # retries went to the other endpoint and carried the attempt number and the budget left
    retried = [r for r in calls if r.attempt > 1]
    # (the first one: later, outlier detection may have ejected one of the two endpoints)
    assert retried and retried[0].tried[0] != retried[0].tried[1]
    assert all(int(r.headers.get(EXPECTED_TIMEOUT_HEADER) or 0) <= 10000 for r in calls)


async def test_errors_surface_as_typed_sidecar_errors() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    cluster = Cluster("svc")  # no endpoints, no fallback configured
    policy = UpstreamConfig(fallback={"on": []})  # type: ignore[arg-type]
    handler = build(policy, cluster, clock, obs, lambda r: None)  # type: ignore[arg-type,return-value]
    try:
        await handler(make_request())
    except SidecarError as exc:
        assert exc.code == "no_healthy_endpoints" and exc.status == 503
    else:
        raise AssertionError("expected no_healthy_endpoints")
