"""Active health checks of HTTP/2-only upstreams: `protocol: h2`/`h2c` upstreams are probed
over HTTP/2 (prior knowledge, or TLS with ALPN h2) against an h2 double that refuses
HTTP/1.1; `protocol: auto` keeps HTTP/1.1 probes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from sidecar.app import Sidecar
from sidecar.balance.cluster import ActiveState, Cluster
from sidecar.config import HealthCheckConfig, TlsConfig
from sidecar.discovery.endpoints import EndpointSet
from sidecar.resilience.health_check import HealthChecker, h2_probe, http_probe
from sidecar.transport.tls import build_tls
from sidecar.vocab.endpoint import Endpoint
from tests.doubles.h2_upstream import H2Upstream
from tests.integration.protocols.tls_upstream import TlsH2Upstream
from tests.unit.resilience.fakes import FakeClock

ONE_STRIKE = HealthCheckConfig(timeout=0.3, unhealthy_threshold=1, healthy_threshold=1)


def _cluster(port: int, host: str = "127.0.0.1") -> Cluster:
    cluster = Cluster("svc")
    cluster.update(EndpointSet("svc", (Endpoint(host, port),), "static", 0.0))
    return cluster


@pytest.fixture
async def h2c() -> AsyncIterator[H2Upstream]:
    up = await H2Upstream().start()
    yield up
    await up.stop()


async def test_an_h2c_endpoint_is_healthy_on_200_unhealthy_on_5xx_and_silence(
    h2c: H2Upstream,
) -> None:
    cluster = _cluster(h2c.port)
    checker = HealthChecker(cluster, ONE_STRIKE, FakeClock(), asyncio.Semaphore(1), probe=h2_probe)
    [state] = cluster.states
    await checker.check_once()
    assert state.active is ActiveState.HEALTHY
    assert dict(h2c.seen[-1])[":path"] == "/healthz"  # one GET, over HTTP/2
    h2c.status = 503
    await checker.check_once()
    assert state.active is ActiveState.UNHEALTHY
    h2c.status = 200
    await checker.check_once()
    assert state.active is ActiveState.HEALTHY
    h2c.silent = True
    assert await h2_probe(state.endpoint, "svc", "/healthz", 0.2) == (
        "timeout",
        "no answer within 200 ms",
    )
    await checker.check_once()
    assert state.active is ActiveState.UNHEALTHY
    assert h2c.refused_http1 == 0


async def test_an_http1_probe_is_what_an_h2_only_endpoint_refuses(h2c: H2Upstream) -> None:
    # Why h2/h2c upstreams need HTTP/2 probes (and what `protocol: auto` keeps doing).
    result, _ = await http_probe(Endpoint("127.0.0.1", h2c.port), "svc", "/healthz", 1.0)
    assert result == "reset" and h2c.refused_http1 == 1


async def test_an_h2_endpoint_over_tls_is_probed_with_alpn_h2(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    up = await TlsH2Upstream(cert=ca.issue_cert("svc")).start()
    try:
        tls = build_tls(TlsConfig.model_validate({"ca_file": str(ca_file)}))
        endpoint = Endpoint("127.0.0.1", up.port)
        assert await h2_probe(endpoint, "svc", "/healthz", 1.0, tls) == ("success", "")
        assert up.server_names == ["svc"]
        up.status = 502
        assert await h2_probe(endpoint, "svc", "/healthz", 1.0, tls) == ("status", "status 502")
    finally:
        await up.stop()


async def _wait_for(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("protocol", "verdict"),
    [("h2c", ActiveState.HEALTHY), ("h2", ActiveState.HEALTHY), ("auto", ActiveState.UNHEALTHY)],
)
async def test_the_upstreams_protocol_picks_the_probe(
    sidecar_factory: Callable[..., Any], h2c: H2Upstream, protocol: str, verdict: ActiveState
) -> None:
    sc: Sidecar = await sidecar_factory(
        {
            "service": {"name": "app"},
            "discovery": {"static": {"svc": [f"127.0.0.1:{h2c.port}"]}},
            "upstreams": {
                "svc": {
                    "protocol": protocol,
                    "health_check": {
                        "interval": "50ms",
                        "timeout": "500ms",
                        "unhealthy_threshold": 1,
                        "healthy_threshold": 1,
                    },
                }
            },
        }
    )
    cluster = sc.upstreams.cluster("svc")
    await _wait_for(lambda: len(cluster.states) == 1, "static discovery published")
    [state] = cluster.states
    await _wait_for(lambda: state.active is verdict, f"{protocol}: {verdict}")
    assert (h2c.refused_http1 > 0) is (protocol == "auto")
    if protocol == "auto":
        return
    h2c.status = 503
    await _wait_for(lambda: state.active is ActiveState.UNHEALTHY, "503: unhealthy")
