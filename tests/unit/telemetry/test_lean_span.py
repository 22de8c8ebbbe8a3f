"""A sampled request's spans are LeanSpans (lighter than the SDK's); what leaves the process
must be what the SDK's span would have exported: the same OTLP protobuf, field for field,
except the ids and times that differ between any two spans."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from sidecar.config import TracingConfig
from sidecar.telemetry.lean_span import MAX_ATTRIBUTES, LeanSpan
from sidecar.telemetry.tracing import SpanStarter, Tracing, build_tracing


def _tracing(sampler: Any = "parentbased_always_on") -> tuple[Tracing, InMemorySpanExporter]:
    tracing = build_tracing(TracingConfig(exporter="none", sampler=sampler, ratio=1.0), "svc")
    memory = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(memory))
    return tracing, memory


def _parent(sampled: bool = True) -> Context:
    sc = SpanContext(
        0xABC,
        0x1234,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0),
        trace_state=TraceState([("k", "v")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(sc), Context())


def _exercise(span: trace.Span) -> None:
    span.set_attribute("http.request.method", "GET")
    span.set_attributes({"http.response.status_code": 503, "sidecar.retries": 2})
    span.set_attribute("list", ["a", "b"])
    span.set_attribute("ratio", 0.5)
    span.set_attribute("flag", True)
    span.update_name("GET /users")
    span.set_status(StatusCode.ERROR, "upstream_unavailable")
    span.set_status(StatusCode.UNSET)  # ignored: UNSET never overwrites
    span.add_event("retry", {"attempt": 1}, timestamp=123)
    try:
        raise ConnectionResetError("peer reset")
    except ConnectionResetError as exc:
        span.record_exception(exc, timestamp=456)


def _normalised(span: ReadableSpan) -> Any:
    message = encode_spans([span])
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                s.span_id = b""
                s.start_time_unix_nano = 0
                s.end_time_unix_nano = 0
                s.flags = 0
                for event in s.events:
                    for attr in event.attributes:
                        if attr.key == "exception.stacktrace":
                            attr.value.string_value = ""
    return message


@pytest.mark.parametrize("root", [False, True])
@pytest.mark.parametrize("kind", [SpanKind.SERVER, SpanKind.CLIENT])
def test_a_lean_span_exports_what_the_sdk_span_would(root: bool, kind: SpanKind) -> None:
    tracing, memory = _tracing()
    starter = SpanStarter(tracing)
    context = Context() if root else _parent()
    assert starter.dropped(trace.get_current_span(context).get_span_context()) is None
    ours = starter.start_sampled("GET", context, kind)
    assert isinstance(ours, LeanSpan)
    sdk = tracing.tracer.start_span("GET", context, kind=kind)
    for span in (ours, sdk):
        _exercise(span)
        span.end()
    lean_out, sdk_out = memory.get_finished_spans()
    if root:  # a root's trace id is its own; everything else must match
        assert lean_out.context is not None and sdk_out.context is not None
        assert lean_out.context.trace_flags == sdk_out.context.trace_flags
        lean_msg, sdk_msg = _normalised(lean_out), _normalised(sdk_out)
        for msg in (lean_msg, sdk_msg):
            msg.resource_spans[0].scope_spans[0].spans[0].trace_id = b""
        assert lean_msg == sdk_msg
    else:
        assert _normalised(lean_out) == _normalised(sdk_out)
        assert lean_out.parent == sdk_out.parent
        assert lean_out.context is not None and sdk_out.context is not None
        assert lean_out.context.trace_state == sdk_out.context.trace_state


def test_ok_is_final_and_nothing_changes_after_end() -> None:
    tracing, memory = _tracing()
    span = SpanStarter(tracing).start_sampled("GET", _parent(), SpanKind.SERVER)
    span.set_status(Status(StatusCode.OK))
    span.set_status(StatusCode.ERROR, "late")
    span.end()
    span.set_attribute("after", 1)
    span.set_status(StatusCode.ERROR)
    span.end()  # a second end exports nothing more
    (out,) = memory.get_finished_spans()
    assert out.status.status_code is StatusCode.OK
    assert "after" not in (out.attributes or {})
    assert not span.is_recording()


def test_attributes_are_bounded_and_typed_like_the_sdks() -> None:
    tracing, memory = _tracing()
    span = SpanStarter(tracing).start_sampled("GET", _parent(), SpanKind.CLIENT)
    for i in range(MAX_ATTRIBUTES + 10):
        span.set_attribute(f"k{i}", i)
    span.set_attribute("k0", "replaced")  # an existing key may still change
    span.set_attribute("bad", {"a": 1})  # type: ignore[arg-type]
    span.end()
    (out,) = memory.get_finished_spans()
    attributes = dict(out.attributes or {})
    assert len(attributes) == MAX_ATTRIBUTES
    assert attributes["k0"] == "replaced"
    assert "bad" not in attributes


def test_an_unknown_sampler_keeps_the_sdk_span() -> None:
    tracing = build_tracing(TracingConfig(exporter="none", ratio=1.0), "svc")
    tracing = Tracing(
        provider=tracing.provider,
        tracer=tracing.tracer,
        buffer=tracing.buffer,
        propagator=tracing.propagator,
        exporting=False,
        sampler="",
    )
    span = SpanStarter(tracing).start_sampled("GET", _parent(), SpanKind.SERVER)
    assert not isinstance(span, LeanSpan)
    span.end()


def test_sampled_spans_reach_the_span_buffer() -> None:
    tracing, _ = _tracing()
    span = SpanStarter(tracing).start_sampled("GET /x", _parent(), SpanKind.SERVER)
    span.set_attribute("http.route", "/x")
    span.end()
    (buffered,) = tracing.buffer.spans()
    assert buffered.name == "GET /x"
    assert (buffered.attributes or {})["http.route"] == "/x"
    assert buffered.context is not None and buffered.context.trace_id == 0xABC
