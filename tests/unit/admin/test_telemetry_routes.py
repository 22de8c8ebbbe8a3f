from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.admin.server import AdminServer
from sidecar.admin.telemetry import telemetry_routes
from sidecar.config import TracingConfig
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.tracing import build_tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    metrics = Metrics("bff")
    metrics.observe_client("user-service", "GET", 200, "", 0.02, TRACE)
    tracing = build_tracing(TracingConfig(exporter="none"), "bff")
    for op in ("GET /a", "GET /b", "GET /b"):
        tracing.tracer.start_span(op).end()

    async def ready() -> list[str]:
        return []

    admin = AdminServer(telemetry_routes(metrics, tracing.buffer), ready)
    await admin.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{admin.port}") as c:
            yield c
    finally:
        await admin.stop()


async def test_metrics_prometheus_text(client: aiohttp.ClientSession) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert "http_client_request_duration_seconds" in names


async def test_metrics_openmetrics_on_request(
    client: aiohttp.ClientSession,
) -> None:
    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert f'# {{trace_id="{TRACE}"}}' in text


async def test_debug_traces(client: aiohttp.ClientSession) -> None:
    resp = await client.get("/debug/traces", params={"service": "bff", "lookback": "15m"})
    assert resp.status == 200
    body = await resp.json()
    assert body["total"] == 3 and body["errors"] is None
    resp = await client.get(
        "/debug/traces", params={"service": "bff", "operation": "GET /b", "limit": "1"}
    )
    body = await resp.json()
    assert body["total"] == 1
    assert body["data"][0]["spans"][0]["operationName"] == "GET /b"


@pytest.mark.parametrize("query", [{"lookback": "soon"}, {"limit": "x"}, {"limit": "0"}])
async def test_debug_traces_rejects_bad_params(
    client: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    resp = await client.get("/debug/traces", params=query)
    assert resp.status == 400
    assert (await resp.json())["errors"]


def test_routes_are_tuples_for_the_admin_server() -> None:
    routes = telemetry_routes(Metrics("x"), None)
    assert [(m, p) for m, p, _ in routes] == [("GET", "/metrics")]
