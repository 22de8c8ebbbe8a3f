"""A collector outage is two log lines — one when export starts failing, one when it works
again with the number of spans dropped in between — however many batches fail, over real
OTLP (HTTP and gRPC) to the receiver double."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from opentelemetry.trace import SpanKind

from sidecar.config import TracingConfig
from sidecar.telemetry.tracing import build_tracing
from tests.doubles.otlp import OtlpReceiver

# The default schedule exports a batch a second: 30 failed batches is what a 30 s outage
# produces. Here batches leave every 20 ms, so the same count takes about a second.
FAILED_BATCHES = 30


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


@pytest.mark.parametrize("transport", ["otlp_http", "otlp_grpc"])
async def test_outage_prints_one_line_when_it_starts_and_one_when_it_ends(
    receiver: OtlpReceiver, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = receiver.http_endpoint if transport == "otlp_http" else receiver.grpc_endpoint
    drops: list[int] = []  # one entry per failed batch
    tracing = build_tracing(
        TracingConfig(exporter=transport, endpoint=endpoint),  # type: ignore[arg-type]
        "bff",
        on_spans_dropped=drops.append,
        schedule_delay=0.02,
        max_export_batch_size=4,
        # shorter than the SDK's first retry backoff (~1 s): each batch fails at once
        export_timeout=0.3,
        shutdown_timeout=0.5,
    )
    caplog.set_level(logging.INFO)

    def spans(n: int) -> None:
        for _ in range(n):
            tracing.tracer.start_span("GET", kind=SpanKind.SERVER).end()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    try:
        receiver.reject = True
        deadline = time.monotonic() + 20
        while len(drops) < FAILED_BATCHES:
            assert time.monotonic() < deadline, f"only {len(drops)} batches failed"
            spans(2)
            await asyncio.sleep(0.01)  # paces the load; the receiver runs on this loop
        assert receiver.rejected >= FAILED_BATCHES

        receiver.reject = False
        deadline = time.monotonic() + 20
        while not receiver.spans or len(warnings()) < 2:
            assert time.monotonic() < deadline, warnings()
            spans(1)
            await asyncio.sleep(0.01)
    finally:
        await asyncio.to_thread(tracing.shutdown)

    lines = warnings()
    assert len(lines) == 2, lines
    failing, recovered = lines
    assert "trace export to" in failing and "is failing" in failing
    assert "sidecar_spans_dropped_total" in failing
    assert "recovered after" in recovered
    assert f"{sum(drops)} spans were dropped meanwhile" in recovered
    # none of the SDK's "Transient error ... encountered while exporting traces" or
    # "Failed to export traces" lines
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
