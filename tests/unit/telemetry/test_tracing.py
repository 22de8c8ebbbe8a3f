from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind

from sidecar.config import TracingConfig
from sidecar.telemetry.tracing import (
    BoundedExportProcessor,
    EndAfterReply,
    SpanStarter,
    build_tracing,
    make_sampler,
    otlp_http_traces_url,
)


class GatedExporter(SpanExporter):
    """A collector that answers only when the test opens the gate (or says it failed)."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.gate = threading.Event()
        self.result = result
        self.exported: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(10)
        self.exported.extend(s.name for s in spans)
        return self.result

    def shutdown(self) -> None:
        self.gate.set()


class Drops:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self.lock:
            self.count += n


def poll(predicate: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_sampler_names() -> None:
    trace_id = 0xFFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF
    for name in ("always_on", "parentbased_always_on"):
        assert make_sampler(name, 0.0).should_sample(None, trace_id, "x").decision.is_sampled()
    for name in (
        "always_off",
        "parentbased_always_off",
        "traceidratio",
        "parentbased_traceidratio",
    ):
        result = make_sampler(name, 0.0).should_sample(None, trace_id, "x")
        assert result.decision is Decision.DROP, name
    assert make_sampler("traceidratio", 1.0).should_sample(None, 1, "x").decision.is_sampled()
    with pytest.raises(ValueError):
        make_sampler("sometimes", 1.0)


def test_otlp_http_url() -> None:
    assert otlp_http_traces_url("http://jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert otlp_http_traces_url("http://jaeger:4318/") == "http://jaeger:4318/v1/traces"
    assert otlp_http_traces_url("jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert otlp_http_traces_url("https://c/custom/path") == "https://c/custom/path"


def test_queue_bound_drops_and_counts_without_blocking() -> None:
    exporter = GatedExporter()
    drops = Drops()
    proc = BoundedExportProcessor(
        exporter,
        max_queue_size=10,
        max_export_batch_size=5,
        schedule_delay=0.01,
        on_dropped=drops,
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(proc)
    tracer = provider.get_tracer("t")
    t0 = time.monotonic()
    for i in range(100):
        tracer.start_span(f"s{i}").end()
    spent = time.monotonic() - t0
    # The exporter is stuck; ending spans still returned at once (generous bound, 2 cores).
    assert spent < 2.0
    # at most queue (10) + the batch the stuck exporter holds (5) survive
    poll(lambda: drops.count >= 85)
    exporter.gate.set()
    assert proc.force_flush()
    provider.shutdown()
    assert drops.count + len(exporter.exported) == 100
    assert len(exporter.exported) <= 15


def test_failed_exports_are_counted() -> None:
    exporter = GatedExporter(SpanExportResult.FAILURE)
    exporter.gate.set()
    drops = Drops()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        BoundedExportProcessor(exporter, max_queue_size=100, schedule_delay=0.01, on_dropped=drops)
    )
    tracer = provider.get_tracer("t")
    for i in range(7):
        tracer.start_span(f"s{i}").end()
    provider.force_flush()
    assert drops.count == 7
    provider.shutdown()


def test_shutdown_is_bounded_when_the_collector_hangs() -> None:
    exporter = GatedExporter()
    exporter.gate.clear()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        BoundedExportProcessor(exporter, schedule_delay=0.01, shutdown_timeout=0.2)
    )
    provider.get_tracer("t").start_span("x").end()
    t0 = time.monotonic()
    provider.shutdown()  # the timer calls exporter.shutdown(), which opens the gate
    assert time.monotonic() - t0 < 5.0


def test_buffer_filled_when_export_is_off() -> None:
    tracing = build_tracing(TracingConfig(exporter="none", buffer_spans=3), "bff")
    assert not tracing.exporting
    for i in range(5):
        tracing.tracer.start_span(f"op{i}").end()
    assert [s.name for s in tracing.buffer.spans()] == ["op2", "op3", "op4"]
    (span,) = tracing.buffer.spans()[:1]
    assert span.resource.attributes["service.name"] == "bff"
    tracing.shutdown()


def test_sampled_out_spans_do_not_record() -> None:
    tracing = build_tracing(TracingConfig(exporter="none", sampler="always_off"), "bff")
    span = tracing.tracer.start_span("x")
    assert not span.is_recording()
    span.end()
    assert len(tracing.buffer) == 0


def test_no_global_provider_is_set() -> None:
    from opentelemetry import trace

    before = trace.get_tracer_provider()
    build_tracing(TracingConfig(exporter="none"), "bff")
    assert trace.get_tracer_provider() is before


class Seen(SpanProcessor):
    def __init__(self) -> None:
        self.names: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.names.append(span.name)


def ended(name: str) -> ReadableSpan:
    return ReadableSpan(name=name)


async def test_spans_ended_in_a_callback_are_processed_after_it() -> None:
    # A request's spans end before its response is written: their processing (buffer record,
    # export queue) must wait until the callback that writes the response is over.
    seen = Seen()
    ends = EndAfterReply(seen)
    for name in ("server", "client", "retry"):
        ends.on_end(ended(name))
    assert seen.names == []
    await asyncio.sleep(0)  # one loop iteration
    assert seen.names == ["server", "client", "retry"]


def test_spans_ended_outside_a_loop_are_processed_at_once() -> None:
    seen = Seen()
    EndAfterReply(seen).on_end(ended("shutdown"))
    assert seen.names == ["shutdown"]


async def test_a_flush_from_another_thread_delivers_what_waits() -> None:
    tracing = build_tracing(TracingConfig(exporter="none", sampler="always_on"), "bff")
    span = SpanStarter(tracing).start_sampled("GET /x", Context(), SpanKind.SERVER)
    span.end()
    assert len(tracing.buffer) == 0
    # Tracing.force_flush is what shutdown and tests call, off the loop.
    await asyncio.to_thread(tracing.force_flush)
    assert [s.name for s in tracing.buffer.spans()] == ["GET /x"]
