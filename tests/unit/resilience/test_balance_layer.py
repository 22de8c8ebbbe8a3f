import asyncio
import contextlib
import random

import pytest

from sidecar.balance.cluster import Cluster
from sidecar.balance.ewma import PeakEwmaBalancer
from sidecar.balance.round_robin import RoundRobinBalancer
from sidecar.config import OutlierDetectionConfig
from sidecar.discovery.endpoints import Endpoint, EndpointSet
from sidecar.errors import NoHealthyEndpoints, UpstreamConnectFailure
from sidecar.http import Request, Response
from sidecar.resilience.balance_layer import BalanceLayer
from sidecar.resilience.outlier import OutlierDetector
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
