import asyncio
import contextlib
import random

import pytest

from sidecar.balance.cluster import ActiveState, Cluster, PassiveState
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.round_robin import RoundRobinBalancer
from sidecar.config import OutlierDetectionConfig
from sidecar.discovery.endpoints import EndpointSet
from sidecar.errors import NoHealthyEndpoints, UpstreamConnectFailure
from sidecar.http import Request, Response
from sidecar.resilience.balance_layer import BalanceLayer
from sidecar.resilience.classify import Outcome
from sidecar.resilience.outlier import OutlierDetector
from sidecar.vocab.endpoint import Endpoint
from tests.unit.resilience.fakes import (
    FakeClock,
    RecordingObserver,
    ScriptedUpstream,
    make_request,
    response,
)


def cluster_of(n: int) -> Cluster:
    c = Cluster("svc")
    c.update(EndpointSet("svc", tuple(Endpoint("10.0.0.1", 9000 + i) for i in range(n)), "s", 0))
    return c


async def test_sets_endpoint_tracks_inflight_and_feeds_rtt() -> None:
    clock = FakeClock()
    c = cluster_of(1)
    seen_inflight: list[int] = []

    async def up(request: Request) -> Response:
        seen_inflight.append(c.states[0].inflight)
        clock.advance(0.05)
        return response()

    balancer = PeakEwmaBalancer(clock, random.Random(1))
    req = make_request()
    await BalanceLayer(c, balancer, clock).wrap(up)(req)
    assert req.endpoint == c.states[0].endpoint and req.tried == [req.endpoint]
    assert seen_inflight == [1] and c.states[0].inflight == 0
    assert c.states[0].ewma_rtt == pytest.approx(0.05)


async def test_no_endpoints_is_no_healthy_endpoints() -> None:
    clock, obs = FakeClock(), RecordingObserver()
    handler = BalanceLayer(cluster_of(0), RoundRobinBalancer(), clock, observer=obs).wrap(
        ScriptedUpstream(response())
    )
    with pytest.raises(NoHealthyEndpoints):
        await handler(make_request())
    assert obs.of("rejected") == [("rejected", "svc", "no_healthy_endpoints")]


async def test_failures_eject_and_ejected_endpoints_are_skipped() -> None:
    clock = FakeClock()
    c = cluster_of(2)
    bad = c.states[0].endpoint
    outlier = OutlierDetector(OutlierDetectionConfig(consecutive_5xx=2), c)

    async def up(request: Request) -> Response:
        if request.endpoint == bad:
            raise UpstreamConnectFailure("refused")
        return response()

    handler = BalanceLayer(c, RoundRobinBalancer(), clock, outlier).wrap(up)
    for _ in range(4):
        with contextlib.suppress(UpstreamConnectFailure):
            await handler(make_request())
    assert c.states[0].is_ejected(clock.now)
    for _ in range(10):
        req = make_request()
        await handler(req)
        assert req.endpoint != bad
    clock.advance(31.0)
    assert not outlier.any_ejected(clock.now)


async def test_cancelled_attempt_releases_inflight() -> None:
    clock = FakeClock()
    c = cluster_of(1)
    started = asyncio.Event()

    async def hang(request: Request) -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    handler = BalanceLayer(c, RoundRobinBalancer(), clock).wrap(hang)
    task = asyncio.ensure_future(handler(make_request()))
    await started.wait()
    assert c.states[0].inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.states[0].inflight == 0


async def test_failed_attempt_records_penalty_and_last_failure() -> None:
    clock = FakeClock()
    c = cluster_of(2)
    bad = c.states[0]

    async def up(request: Request) -> Response:
        if request.endpoint == bad.endpoint:
            raise UpstreamConnectFailure("refused")
        return response()

    handler = BalanceLayer(c, RoundRobinBalancer(), clock).wrap(up)
    with contextlib.suppress(UpstreamConnectFailure):
        await handler(make_request())
    assert bad.failure_score == 1.0 and bad.last_failure == "connect_failure"
    assert bad.last_failure_at == clock.now
    await handler(make_request())
    assert c.states[1].failure_score == 0.0


async def test_per_try_timeout_cancellation_counts_as_a_timeout_failure() -> None:
    clock = FakeClock()
    c = cluster_of(1)
    outlier = OutlierDetector(
        OutlierDetectionConfig(consecutive_5xx=5, consecutive_local_origin_failure=1), c
    )
    started = asyncio.Event()

    async def blackhole(request: Request) -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    handler = BalanceLayer(c, RoundRobinBalancer(), clock, outlier, per_try_timeout=0.5).wrap(
        blackhole
    )
    # Cancelled early (caller gone): says nothing about the endpoint.
    task = asyncio.ensure_future(handler(make_request()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.states[0].failure_score == 0.0 and not c.states[0].is_ejected(clock.now)
    # Cancelled at the per-try limit: a timeout.
    started.clear()
    task = asyncio.ensure_future(handler(make_request()))
    await started.wait()
    clock.advance(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.states[0].last_failure == "timeout"
    assert c.states[0].is_ejected(clock.now)


async def test_endpoint_on_probation_gets_one_request_at_a_time() -> None:
    clock = FakeClock()
    c = cluster_of(2)
    outlier = OutlierDetector(OutlierDetectionConfig(consecutive_local_origin_failure=1), c)
    returning = c.states[0]
    outlier.record(returning, Outcome.CONNECT_FAILURE, clock.now)
    clock.advance(31.0)
    release, all_in = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def up(request: Request) -> Response:
        assert request.endpoint is not None
        seen.append(request.endpoint.port)
        if len(seen) == 10:
            all_in.set()
        await release.wait()
        return response()

    # round robin would send every other request to the returning endpoint
    handler = BalanceLayer(c, RoundRobinBalancer(), clock, outlier).wrap(up)
    tasks = [asyncio.ensure_future(handler(make_request())) for _ in range(10)]
    await asyncio.wait_for(all_in.wait(), 5)
    assert seen.count(returning.endpoint.port) == 1
    release.set()
    await asyncio.gather(*tasks)
    assert returning.passive is PassiveState.HEALTHY


async def test_actively_unhealthy_endpoints_are_not_picked() -> None:
    clock = FakeClock()
    c = cluster_of(3)
    c.set_active(c.states[1], ActiveState.UNHEALTHY)
    assert c.active_down == 1
    up = ScriptedUpstream(response())
    handler = BalanceLayer(c, RoundRobinBalancer(), clock).wrap(up)
    for _ in range(12):
        await handler(make_request())
    assert {r.endpoint for r in up.calls} == {c.states[0].endpoint, c.states[2].endpoint}
    c.set_active(c.states[1], ActiveState.HEALTHY)
    assert c.active_down == 0
    for _ in range(3):
        await handler(make_request())
    assert c.states[1].endpoint in {r.endpoint for r in up.calls}
