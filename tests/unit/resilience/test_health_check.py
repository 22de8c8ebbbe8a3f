"""Active health checks: the threshold state machine, the checker against real loopback
sockets (probe results by kind), and how verdicts take endpoints in and out of rotation."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from sidecar.balance.cluster import ActiveState, Cluster
from sidecar.config import HealthCheckConfig
from sidecar.discovery.endpoints import EndpointSet
from sidecar.resilience.health_check import (
    ActiveHealthTracker,
    HealthChecker,
    HealthChecks,
    http_probe,
)
from sidecar.vocab.endpoint import Endpoint
from tests.doubles.fault_upstream import FaultServer, RefusingPort
from tests.unit.resilience.fakes import FakeClock


class Results:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def health_check(self, upstream: str, result: str) -> None:
        self.seen.append((upstream, result))


def cluster_of(addresses: list[str], source: str = "static") -> Cluster:
    c = Cluster("svc")
    eps = tuple(Endpoint(a.split(":")[0], int(a.split(":")[1])) for a in addresses)
    c.update(EndpointSet("svc", eps, source, 0.0))
    return c


def test_tracker_thresholds() -> None:
    t = ActiveHealthTracker(unhealthy_threshold=3, healthy_threshold=2)
    assert t.state is ActiveState.UNKNOWN
    assert t.record(False) is None and t.record(False) is None
    assert t.record(False) is ActiveState.UNHEALTHY
    assert t.record(False) is None
    assert t.record(True) is None  # one pass is not enough to come back
    assert t.record(False) is None
    assert t.record(True) is None
    assert t.record(True) is ActiveState.HEALTHY
    assert t.record(True) is None
    assert [t.record(False), t.record(False), t.record(True)] == [None, None, None]
    assert t.state is ActiveState.HEALTHY  # the run of failures was broken


def test_first_pass_from_unknown_is_enough() -> None:
    t = ActiveHealthTracker(3, 5)
    assert t.record(True) is ActiveState.HEALTHY


async def test_probe_results_by_kind() -> None:
    ok = await FaultServer("ok").start()
    sick = await FaultServer("ok", healthy=False).start()
    hole = await FaultServer("blackhole", health_path="/other").start()
    refusing = RefusingPort()
    try:
        ep = lambda port: Endpoint("127.0.0.1", port)  # noqa: E731
        assert await http_probe(ep(ok.port), "svc", "/healthz", 1.0) == ("success", "")
        assert await http_probe(ep(sick.port), "svc", "/healthz", 1.0) == ("status", "status 503")
        assert (await http_probe(ep(hole.port), "svc", "/healthz", 0.05))[0] == "timeout"
        assert (await http_probe(ep(refusing.port), "svc", "/healthz", 1.0))[0] == (
            "connect_failure"
        )
        assert ok.paths["/healthz"] == 1
    finally:
        for s in (ok, sick, hole):
            await s.stop()
        refusing.close()


async def test_checker_takes_a_failing_endpoint_out_and_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.resilience.health_check")
    a = await FaultServer("ok").start()
    b = await FaultServer("ok").start()
    try:
        c = cluster_of([a.address, b.address])
        results = Results()
        cfg = HealthCheckConfig(
            interval=1.0, timeout=0.5, unhealthy_threshold=2, healthy_threshold=2
        )
        checker = HealthChecker(c, cfg, FakeClock(), asyncio.Semaphore(4), results)
        await checker.check_once()
        assert [s.active for s in c.states] == [ActiveState.HEALTHY] * 2
        b.healthy = False
        await checker.check_once()
        assert c.states[1].active is ActiveState.HEALTHY and c.active_down == 0
        await checker.check_once()
        assert c.states[1].active is ActiveState.UNHEALTHY and c.active_down == 1
        assert [s.endpoint.port for s in c.available(0.0)] == [a.port]
        b.healthy = True
        await checker.check_once()
        assert c.active_down == 1
        await checker.check_once()
        assert c.active_down == 0 and c.states[1].active is ActiveState.HEALTHY
        assert results.seen.count(("svc", "status")) == 2
        assert results.seen.count(("svc", "success")) == 8
        msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(msgs) == 2, msgs
        assert f"{b.address} failed 2 health checks in a row (last: status 503)" in msgs[0]
        assert f"{b.address} passed 2 health checks in a row: back in rotation" in msgs[1]
    finally:
        await a.stop()
        await b.stop()


async def test_consul_endpoints_are_never_probed() -> None:
    a = await FaultServer("ok").start()
    try:
        c = cluster_of([a.address], source="consul")
        checker = HealthChecker(c, HealthCheckConfig(), FakeClock(), asyncio.Semaphore(1))
        await checker.check_once()
        assert a.paths["/healthz"] == 0
    finally:
        await a.stop()


async def test_probes_are_bounded_in_concurrency() -> None:
    inflight = peak = 0
    gate = asyncio.Event()

    async def probe(
        endpoint: Endpoint, host: str, path: str, timeout: float, tls: object = None
    ) -> tuple[str, str]:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0)
        if peak >= 3:
            gate.set()
        await gate.wait()
        inflight -= 1
        return "success", ""

    c = cluster_of([f"10.0.0.1:{9000 + i}" for i in range(20)])
    checker = HealthChecker(c, HealthCheckConfig(), FakeClock(), asyncio.Semaphore(3), probe=probe)
    await asyncio.wait_for(checker.check_once(), 5)
    assert peak == 3


def test_jittered_interval_is_never_longer_than_configured() -> None:
    c = cluster_of(["10.0.0.1:1"])
    checker = HealthChecker(
        c, HealthCheckConfig(interval=5.0), FakeClock(), asyncio.Semaphore(1), rng=random.Random(1)
    )
    delays = [checker.next_delay() for _ in range(1000)]
    assert max(delays) <= 5.0 and min(delays) >= 5.0 * 0.85
    assert max(delays) - min(delays) > 0.5  # and it does vary


async def test_turning_checks_off_forgets_their_verdicts() -> None:
    c = cluster_of(["10.0.0.1:1", "10.0.0.1:2"])
    checks = HealthChecks(FakeClock())
    checks.update(c, HealthCheckConfig())
    assert "svc" in checks
    c.set_active(c.states[0], ActiveState.UNHEALTHY)
    checks.update(c, None)
    assert "svc" not in checks
    assert c.active_down == 0 and c.states[0].active is ActiveState.UNKNOWN
    await checks.stop()
