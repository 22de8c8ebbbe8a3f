"""otelfast reads OpenTelemetry's context keys and builds its SpanContext tuples directly:
hold every helper to the API call it replaces, so an OTel upgrade that changes them fails here
rather than silently dropping trace propagation."""

from __future__ import annotations

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags, TraceState

from sidecar.telemetry import otelfast

CASES = [
    (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, 1, TraceState([("k", "v")])),
    (1, 1, False, 0, None),
    (0, 5, False, 1, None),  # invalid trace id
    (5, 0, False, 3, None),  # invalid span id
    ((1 << 128) - 1, (1 << 64) - 1, False, 2, None),
]


def test_span_context_is_what_the_constructor_builds() -> None:
    for trace_id, span_id, remote, flags, state in CASES:
        want = SpanContext(trace_id, span_id, remote, TraceFlags(flags), state)
        got = otelfast.span_context(trace_id, span_id, remote, flags, state)
        assert type(got) is SpanContext
        assert got == want
        assert (got.trace_id, got.span_id, got.is_remote) == (trace_id, span_id, remote)
        assert got.trace_flags == want.trace_flags and type(got.trace_flags) is TraceFlags
        assert got.trace_state == want.trace_state and got.is_valid == want.is_valid
        assert otelfast.is_valid(got) == want.is_valid
        assert otelfast.is_sampled(got) == want.trace_flags.sampled


def test_context_helpers_agree_with_the_api() -> None:
    empty = Context()
    assert otelfast.span_of(empty) is trace.get_current_span(empty) is INVALID_SPAN
    span = NonRecordingSpan(otelfast.span_context(7, 9, False, 1, None))
    with_bag = baggage.set_baggage("tenant", "a", empty)
    for base in (empty, with_bag):
        ours, theirs = otelfast.with_span(span, base), trace.set_span_in_context(span, base)
        assert type(ours) is Context and ours == theirs
        assert otelfast.span_of(ours) is trace.get_current_span(theirs) is span
        assert otelfast.has_baggage(ours) == bool(baggage.get_all(theirs))
    assert otelfast.has_baggage(with_bag) and not otelfast.has_baggage(empty)
    # The source context is left as it was (contexts are immutable values).
    assert otelfast.span_of(with_bag) is INVALID_SPAN


def test_span_context_of_and_has_state_agree_with_the_api() -> None:
    sc = otelfast.span_context(7, 9, True, 1, TraceState([("k", "v")]))
    for ctx in (Context(), trace.set_span_in_context(NonRecordingSpan(sc), Context())):
        assert otelfast.span_context_of(ctx) == trace.get_current_span(ctx).get_span_context()
    for state in (None, TraceState(), TraceState([("k", "v")]), otelfast.DEFAULT_TRACE_STATE):
        assert otelfast.has_state(state) == bool(state)
    empty = otelfast.span_context(7, 9, False, 0, TraceState())
    assert empty.trace_state == SpanContext(7, 9, False, TraceFlags(0), TraceState()).trace_state


def test_span_sink_is_where_the_sdk_tracer_sends_its_spans() -> None:
    """`span_sink` reads the SDK tracer's processor, resource and scope; a span ended into
    that processor reaches the provider's processors with the tracer's resource and scope,
    exactly as one the tracer itself ends."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sidecar", "1.2.3")
    sink = otelfast.span_sink(tracer)
    assert sink is not None
    processor, resource, scope = sink
    tracer.start_span("sdk").end()
    (sdk_span,) = memory.get_finished_spans()
    assert resource is sdk_span.resource
    assert scope == sdk_span.instrumentation_scope
    processor.on_end(sdk_span)
    assert len(memory.get_finished_spans()) == 2
    assert otelfast.span_sink(trace.NoOpTracer()) is None
