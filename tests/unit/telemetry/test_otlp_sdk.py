"""Contract test for sidecar/telemetry/otlp_sdk.py: the SDK exporter internal it overrides is
still there and still builds each gRPC request (this fails loudly on an SDK upgrade that changes
it); and both exporters `make_exporter` builds deliver our encoder's requests to a real OTLP
receiver."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sidecar.config import TracingConfig
from sidecar.telemetry import otlp_sdk
from sidecar.telemetry.tracing import make_exporter
from tests.doubles.otlp import OtlpReceiver

RESOURCE = Resource.create({"service.name": "bff"})
SCOPE = InstrumentationScope("sidecar", "0.1")


def spans(n: int) -> list[ReadableSpan]:
    return [
        ReadableSpan(
            name="GET /api",
            context=SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, i + 1, False, TraceFlags(1)),
            resource=RESOURCE,
            attributes={
                "http.request.method": "GET",
                "url.path": f"/api/{i}",
                "http.response.status_code": 200,
                "server.port": 8080,
            },
            kind=SpanKind.SERVER,
            status=Status(StatusCode.UNSET),
            start_time=1_700_000_000_000_000_000,
            end_time=1_700_000_000_000_100_000,
            instrumentation_scope=SCOPE,
        )
        for i in range(n)
    ]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


def test_grpc_exporter_builds_each_request_through_translate_data() -> None:
    assert list(inspect.signature(GrpcExporter._translate_data).parameters) == ["self", "data"]
    assert "request=self._translate_data(data)" in inspect.getsource(OTLPExporterMixin._export)
    exporter = otlp_sdk.grpc_exporter("http://127.0.0.1:1", True, 1.0)
    try:
        assert isinstance(exporter, GrpcExporter)
        batch = spans(3)
        assert exporter._translate_data(batch) == GrpcExporter._translate_data(exporter, batch)
    finally:
        exporter.shutdown()


# The exporters against a real receiver.


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_exported_spans_reach_the_receiver(receiver: OtlpReceiver, transport: str) -> None:
    endpoint = receiver.http_endpoint if transport == "http" else receiver.grpc_endpoint
    config = TracingConfig(exporter=f"otlp_{transport}", endpoint=endpoint)  # type: ignore[arg-type]
    exporter = make_exporter(config, 5.0)
    assert exporter is not None
    try:
        result = await asyncio.to_thread(exporter.export, spans(70))
    finally:
        await asyncio.to_thread(exporter.shutdown)
    assert result is SpanExportResult.SUCCESS
    assert receiver.requests == 1
    assert [s.span_id for s in receiver.spans] == [f"{i + 1:016x}" for i in range(70)]
    assert {s.transport for s in receiver.spans} == {transport}
    assert receiver.spans[5].attributes["url.path"] == "/api/5"
    assert receiver.spans[0].service_name == "bff"
