"""The few OpenTelemetry API calls every request makes, at the cost of a dict lookup.

`trace.get_current_span` does an ABC `isinstance` check, `set_span_in_context` copies the
context twice, `SpanContext(...)` re-validates ids we generated or parsed ourselves, and
`trace_flags.sampled` / `is_valid` are Python properties. With two spans (server and client)
per proxied request that was several percent of the sidecar's CPU. These helpers return the
same objects the API would (tests/unit/telemetry/test_otelfast.py holds them to it); they read
OTel's context keys directly, which is why that test exists."""

from __future__ import annotations

from typing import Any, Final, cast

from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    Span,
    SpanContext,
    TraceFlags,
    Tracer,
    TraceState,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

# Final: the compiled build reads these as constants, not from the module's dict (two
# SpanContexts per request).
_FLAGS: Final = tuple(TraceFlags(i) for i in range(256))
_TRACE_ID_LIMIT: Final = 1 << 128
_SPAN_ID_LIMIT: Final = 1 << 64
_DEFAULT_STATE: Final = DEFAULT_TRACE_STATE
_NEW_TUPLE: Final[Any] = tuple.__new__
_SPAN_CONTEXT: Final[Any] = SpanContext
SAMPLED = int(TraceFlags.SAMPLED)
RANDOM_TRACE_ID = int(TraceFlags.RANDOM_TRACE_ID)

# SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
TRACE_ID: Final = 0
SPAN_ID: Final = 1
FLAGS: Final = 3
STATE: Final = 4
VALID: Final = 5


def span_of(context: Context) -> Span:
    """`trace.get_current_span(context)`; only spans are ever stored under the span key."""
    span = context.get(_SPAN_KEY)
    return INVALID_SPAN if span is None else cast(Span, span)


def span_context_of(context: Context) -> SpanContext:
    """`trace.get_current_span(context).get_span_context()`; a context without a span (a
    request that carries no trace) costs no call into the API's interpreted code."""
    span = context.get(_SPAN_KEY)
    return INVALID_SPAN_CONTEXT if span is None else cast(Span, span).get_span_context()


def has_state(state: TraceState | None) -> bool:
    """`bool(state)`, with the common empty default answered without `TraceState.__len__`
    (interpreted code)."""
    return state is not None and state is not DEFAULT_TRACE_STATE and len(state) > 0


def with_span(span: Span, context: Context) -> Context:
    """`trace.set_span_in_context(span, context)`, with one copy instead of two."""
    values = dict(context)
    values[_SPAN_KEY] = span
    return Context(values)


def has_baggage(context: Context) -> bool:
    """`bool(baggage.get_all(context))`."""
    return bool(context.get(_BAGGAGE_KEY))


def is_sampled(sc: SpanContext) -> bool:
    return bool(sc[FLAGS] & SAMPLED)


def is_valid(sc: SpanContext) -> bool:
    return bool(sc[VALID])


def span_context(
    trace_id: int, span_id: int, is_remote: bool, flags: int, state: TraceState | None
) -> SpanContext:
    """`SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), state)`."""
    valid = 0 < trace_id < _TRACE_ID_LIMIT and 0 < span_id < _SPAN_ID_LIMIT
    if state is None or state is _DEFAULT_STATE or len(state) == 0:  # not has_state(state)
        state = _DEFAULT_STATE
    fields = (trace_id, span_id, is_remote, _FLAGS[flags & 0xFF], state, valid)
    sc: SpanContext = _NEW_TUPLE(_SPAN_CONTEXT, fields)
    return sc


def span_sink(tracer: Tracer) -> tuple[SpanProcessor, Resource, InstrumentationScope | None] | None:
    """Where the SDK tracer's spans go when they end (its provider's processors), and the
    resource and scope it stamps on them; None for a tracer that isn't the SDK's."""
    processor = getattr(tracer, "span_processor", None)
    resource = getattr(tracer, "resource", None)
    if not isinstance(processor, SpanProcessor) or not isinstance(resource, Resource):
        return None
    scope = getattr(tracer, "_instrumentation_scope", None)
    return processor, resource, scope if isinstance(scope, InstrumentationScope) else None
