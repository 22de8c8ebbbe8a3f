"""A real Prometheus server scrapes our /metrics (it asks for OpenMetrics) and the series and
their trace_id exemplars are queryable. Needs the `prometheus` binary (Debian package)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.admin.server import AdminServer
from sidecar.admin.telemetry import telemetry_routes
from sidecar.telemetry.metrics import Metrics
from tests.conftest import free_port, require_binary

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def admin() -> AsyncIterator[tuple[int, Metrics]]:
    metrics = Metrics("bff", ["/users/{id}"])
    metrics.observe_server("GET", "/users/{id}", 200, "", 0.03, TRACE)
    metrics.observe_client("user-service", "GET", 200, "", 0.02, TRACE)
    metrics.breaker_state("user-service", "open")

    async def ready() -> list[str]:
        return []

    server = AdminServer(telemetry_routes(metrics, None), ready)
    port = free_port()
    await server.start("127.0.0.1", port)
    yield port, metrics
    await server.stop()


async def query(session: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with session.get(base + path, params=params) as resp:
        body = await resp.json()
        return body.get("data")


async def test_prometheus_scrapes_series_and_exemplars(
    admin: tuple[int, Metrics], tmp_path: Path
) -> None:
    binary = require_binary("prometheus")
    port, _ = admin
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: sidecar\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    prom_port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")  # a file: a pipe could fill and block it
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--enable-feature=exemplar-storage",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            series: list[Any] = []
            while not series:
                assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "prometheus never scraped the sidecar"
                await asyncio.sleep(0.2)
                try:
                    data = await query(
                        session,
                        base,
                        "/api/v1/query",
                        query='sidecar_circuit_breaker_state{upstream="user-service"}',
                    )
                except aiohttp.ClientError:
                    continue
                series = (data or {}).get("result", [])
            assert series[0]["value"][1] == "2"
            assert series[0]["metric"]["service"] == "bff"

            data = await query(
                session, base, "/api/v1/query", query="http_client_request_duration_seconds_count"
            )
            assert data["result"][0]["metric"]["upstream"] == "user-service"

            now = time.time()
            exemplars = await query(
                session,
                base,
                "/api/v1/query_exemplars",
                query="http_client_request_duration_seconds_bucket",
                start=str(now - 600),
                end=str(now + 60),
            )
            trace_ids = {e["labels"]["trace_id"] for s in exemplars for e in s["exemplars"]}
            assert trace_ids == {TRACE}
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
