"""Every PromQL query of every dashboard, run by a real Prometheus (the Debian `prometheus`
binary) that scrapes a real sidecar under traffic, with one upstream down so breaker, retry,
budget, rejection and fallback series exist. Each query must parse and return data: a panel
that would stay empty on a live sidecar fails here."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.config import split_host_port
from tests.conftest import free_port, require_binary
from tests.integration.test_dashboards import all_queries, load_dashboards, panels, substitute
from tests.integration.top_traffic import drive, drive_grpc, grpc_upstream

SERVICE = "bff"
RATE_INTERVAL = "10s"  # Grafana would use 4 x the 1 s scrape interval; a little more is steadier


async def traffic(inbound: str, outbound: str, stop: asyncio.Event) -> None:
    """Inbound requests (200s and 503s from the app) and outbound calls to a healthy and a
    dead upstream; gRPC calls both ways (outbound to a gRPC upstream and to the dead one;
    inbound to the app, which speaks only HTTP/1.1, so the sidecar answers UNAVAILABLE),
    until `stop`."""
    calls = [
        (inbound + "/users/7", {}),
        (inbound + "/status/503", {}),
        (outbound + "/users/7", {"Host": "good"}),
        (outbound + "/users/7", {"Host": "broken"}),
        (outbound + "/users/7", {"Host": "flaky"}),
    ]
    await asyncio.gather(
        drive(calls, stop, pause=0.02),
        drive_grpc(outbound, "models", stop, pause=0.02),
        drive_grpc(outbound, "broken", stop, pause=0.02),  # the sidecar answers UNAVAILABLE
        drive_grpc(inbound, SERVICE, stop, pause=0.05),
    )


@pytest.fixture
async def models() -> AsyncIterator[int]:
    """A gRPC upstream (the demo's retrieval-service): the gRPC panels get their series."""
    async with grpc_upstream() as port:
        yield port


@pytest.fixture
async def busy_sidecar(
    upstreams: Callable[[str], Any], sidecar_factory: Callable[..., Any], models: int
) -> AsyncIterator[Sidecar]:
    app = await upstreams("app")
    good = await upstreams("good")
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]  # nothing listens: refused
    discovery: dict[str, Any] = {
        "static": {
            "good": [f"127.0.0.1:{good.port}"],
            "broken": [dead[0]],  # down for good: the breaker opens, the fallback answers
            "flaky": [f"127.0.0.1:{good.port}", dead[1]],  # one bad endpoint gets ejected
            "models": [f"127.0.0.1:{models}"],  # gRPC
        }
    }
    # A Consul that refuses connections: the "Discovery errors" panel gets its series.
    discovery["consul"] = {"address": f"http://127.0.0.1:{free_port()}", "register": False}
    sc: Sidecar = await sidecar_factory(
        {
            "service": {"name": SERVICE, "port": app.port},
            "discovery": discovery,
            "upstreams": {
                "default": {
                    "retries": {
                        "attempts": 2,
                        "on": ["connect_failure", "reset", 502, 503],
                        # a small floor and no ratio: a few retries, then the budget is spent
                        "budget_ratio": 0.0,
                        "min_retries_per_s": 0.5,
                        "backoff_base": "1ms",
                        "backoff_max": "5ms",
                    },
                    "circuit_breaker": {
                        "consecutive_failures": 3,
                        "minimum_requests": 5,
                        "reset_timeout": "1s",  # open → half-open → open: transitions keep coming
                    },
                    "outlier_detection": {"consecutive_5xx": 2},
                },
                "broken": {
                    # no ejection: the breaker, not the outlier detector, must take it out
                    "outlier_detection": {"enabled": False},
                    "fallback": {"on": ["circuit_open"], "static": {"body": "{}"}},
                },
            },
            "metrics": {"route_templates": ["/users/{id}"]},
        }
    )
    stop = asyncio.Event()
    inbound = f"http://127.0.0.1:{sc.bound_port('listeners.inbound')}"
    outbound = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
    task = asyncio.create_task(traffic(inbound, outbound, stop))
    yield sc
    stop.set()
    await task


@pytest.fixture
async def prometheus(busy_sidecar: Sidecar, tmp_path: Path) -> AsyncIterator[str]:
    binary = require_binary("prometheus")
    _, admin = split_host_port(busy_sidecar.config.listeners.admin)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: sidecar\n    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:  # a file: a pipe could fill up and block Prometheus
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def instant(session: aiohttp.ClientSession, base: str, query: str) -> list[Any]:
    """Result of an instant query; a query Prometheus cannot parse fails the test at once."""
    async with session.post(base + "/api/v1/query", data={"query": query}) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{query}\n→ {body.get('errorType')}: {body.get('error')}"
    result: list[Any] = body["data"]["result"]
    return result


def has_value(result: list[Any]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def expected_queries() -> list[tuple[str, str]]:
    """(label, PromQL) with the variables substituted: the dashboards' "All" selection, and
    the failing upstream selected on its own."""
    out = []
    for dashboard, where, q in all_queries():
        for upstream in (".*", "broken") if "$upstream" in q else (".*",):
            values = {"service": SERVICE, "upstream": upstream, "__rate_interval": RATE_INTERVAL}
            out.append((f"{dashboard} {where} [upstream={upstream}]", substitute(q, values)))
    return out


async def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    pending = dict(expected_queries())
    assert len(pending) > 40
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        deadline = time.monotonic() + 90
        while True:
            try:
                for label, query in list(pending.items()):
                    if has_value(await instant(session, prometheus, query)):
                        del pending[label]
            except aiohttp.ClientError:
                pass  # Prometheus still starting
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # poll until the series appear, bounded by the deadline
    assert not pending, "queries without data:\n" + "\n".join(
        f"{label}: {q}" for label, q in pending.items()
    )


async def test_latency_panels_get_trace_exemplars(prometheus: str) -> None:
    """The panels with `exemplar: true` really receive exemplars carrying a trace_id."""
    targets = [
        t["expr"]
        for d in load_dashboards().values()
        for p in panels(d)
        for t in p.get("targets", [])
        if t.get("exemplar")
    ]
    assert targets
    values = {"service": SERVICE, "upstream": ".*", "__rate_interval": RATE_INTERVAL}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for expr in targets:
            query = substitute(expr, values)
            deadline = time.monotonic() + 60
            found: list[Any] = []
            while not found:
                assert time.monotonic() < deadline, f"no exemplars for {query}"
                await asyncio.sleep(0.5)
                now = time.time()
                params = {"query": query, "start": str(now - 600), "end": str(now + 60)}
                try:
                    async with session.get(
                        prometheus + "/api/v1/query_exemplars", params=params
                    ) as resp:
                        body = await resp.json()
                except aiohttp.ClientError:
                    continue
                assert body["status"] == "success", body
                found = [e for s in body["data"] or [] for e in s["exemplars"]]
            assert all(len(e["labels"]["trace_id"]) == 32 for e in found)
