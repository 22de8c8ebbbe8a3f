"""`sidecar demo --jaeger`: reading a phase's traces back from Jaeger's query API (the double),
waiting for late batches, and giving up at once when Jaeger cannot be reached."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from aiohttp import web
from rich.console import Console

from sidecar.demo import command as demo
from sidecar.demo.load import PhaseResult
from sidecar.demo.topology import ServicePlan
from sidecar.demo.traces import collect_from_jaeger
from tests.conftest import free_port
from tests.doubles.jaeger import JaegerDouble
from tests.unit.diagnose.builder import (
    DOCS,
    RETR,
    USER,
    jaeger_response,
    meshed,
    rebase,
    sequential_chain,
)

OP = "GET /context/{user_id}"


def recent(n: int) -> list[dict]:  # type: ignore[type-arg]
    return rebase(jaeger_response(sequential_chain(n)), int(time.time() * 1e6))["data"]


async def test_returns_the_phase_once_jaeger_holds_it() -> None:
    since = time.time() - 3600
    async with JaegerDouble(recent(20)) as jaeger, aiohttp.ClientSession() as session:
        payload, why = await collect_from_jaeger(
            session, jaeger.url, "bff", OP, since, expected=20, wait_s=10, poll_s=0.05
        )
    assert why is None and payload is not None
    assert len(payload["data"]) == 20
    [(_, q), *_] = [(p, q) for p, q in jaeger.requests if p == "/api/traces"]
    assert q["service"] == "bff" and q["operation"] == OP
    assert int(q["start"]) == int(since * 1e6) and int(q["limit"]) >= 20


class GrowingJaeger(JaegerDouble):
    """Ingests five more traces after each search it answers, as Jaeger does while the
    sidecars' last batches come in."""

    def __init__(self, pending: list[dict]) -> None:  # type: ignore[type-arg]
        super().__init__(pending[:5])
        self.pending = pending

    async def _search(self, request: web.Request) -> web.Response:
        response = await super()._search(request)
        self.traces = self.pending[: len(self.traces) + 5]
        return response


async def test_waits_for_late_batches() -> None:
    async with GrowingJaeger(recent(20)) as jaeger, aiohttp.ClientSession() as session:
        payload, why = await collect_from_jaeger(
            session, jaeger.url, "bff", OP, 0, expected=20, wait_s=10, poll_s=0.01
        )
    assert why is None and payload is not None and len(payload["data"]) == 20
    searches = [p for p, _ in jaeger.requests if p == "/api/traces"]
    assert len(searches) >= 5  # 5, 10, 15, 20 and 20 again: stable, so complete


async def test_nothing_in_jaeger_is_a_reason_after_the_wait() -> None:
    async with JaegerDouble([]) as jaeger, aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        payload, why = await collect_from_jaeger(
            session, jaeger.url, "bff", OP, 0, expected=20, wait_s=0.3, poll_s=0.05
        )
    assert payload is None and why == f"Jaeger has no bff {OP!r} traces after 0.3s"
    assert time.monotonic() - t0 < 5


async def test_unreachable_jaeger_gives_up_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        payload, why = await collect_from_jaeger(
            session, url, "bff", OP, 0, expected=20, wait_s=60, poll_s=1
        )
    assert payload is None and why is not None
    assert why.startswith(f"cannot reach {url}/api/traces")
    assert time.monotonic() - t0 < 5  # not the 60 s it would wait for late spans


async def test_demo_falls_back_to_the_sidecars_when_jaeger_is_down(tmp_path: Path) -> None:
    """The demo's diagnosis step with an unreachable --jaeger: one line saying so, then the
    same diagnosis from the sidecars' /debug/traces (served here by one admin double)."""
    traces = jaeger_response(
        [
            meshed([(USER, 1, 20), (DOCS, 22, 60), (RETR, 83, 10)], total_ms=95, base_ms=i * 1000)
            for i in range(30)
        ]
    )

    async def debug_traces(request: web.Request) -> web.Response:
        return web.json_response(traces)

    app = web.Application()
    app.router.add_get("/debug/traces", debug_traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    admin = free_port()
    await web.TCPSite(runner, "127.0.0.1", admin).start()
    plans = [
        ServicePlan(name, "unused", 1, 2, 3, admin)
        for name in ("bff", "user-service", "document-service", "retrieval-service")
    ]
    dead = f"http://127.0.0.1:{free_port()}"
    console = Console(record=True, width=200)
    try:
        async with aiohttp.ClientSession() as session:
            diag = await demo.diagnose(
                session,
                console,
                plans,
                PhaseResult("before"),
                tmp_path,
                jaeger=dead,
                jaeger_wait_s=30,
            )
    finally:
        await runner.cleanup()
    text = console.export_text()
    assert f"Jaeger: cannot reach {dead}/api/traces: " in text
    assert "[Connect call failed" in text  # brackets of the reason survive rich's markup
    assert "Collected 30 traces (420 spans) from the 4 sidecars' /debug/traces" in text
    assert diag.source == "traces" and diag.slowest == "document-service"
    assert diag.report is not None and diag.report.exists()
