"""Trace context propagation over our Headers: W3C tracecontext + baggage always, plus B3
(single `b3` and multi `X-B3-*`) and Jaeger `uber-trace-id` when configured.

Unlike OTel's CompositePropagator (where every extractor runs and the last one wins), the
first configured format present on a request wins, and every configured format is injected —
so callers speaking B3 and callers speaking W3C both continue their traces (Envoy can only
emit one format at a time). B3 and Jaeger are implemented here (small, no extra dependency)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceState

from sidecar.http import Headers
from sidecar.telemetry import otelfast


class HeadersGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier.items()]


class HeadersSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.set(key, value)


GETTER = HeadersGetter()
SETTER = HeadersSetter()


Fields = tuple[frozenset[str], list[tuple[str, str]]]


# trace-flags as written in traceparent, looked up rather than formatted per request.
_FLAGS_HEX = tuple(f"{i:02x}" for i in range(256))


class Ids:
    """A span context's ids formatted once for every format that injects it (SpanContext's
    attributes are properties, and hex formatting is not free)."""

    __slots__ = ("flags", "sampled", "span_hex", "trace_hex", "trace_state")

    def __init__(self, ctx: SpanContext) -> None:
        # Fields by index, not `ctx[:5]` unpacked: no slice tuple per request.
        trace_id: int = ctx[otelfast.TRACE_ID]
        span_id: int = ctx[otelfast.SPAN_ID]
        # (to_bytes().hex(): cheaper than a format spec in the compiled build)
        self.trace_hex = trace_id.to_bytes(16, "big").hex()
        self.span_hex = span_id.to_bytes(8, "big").hex()
        self.flags = int(ctx[otelfast.FLAGS])
        self.sampled = bool(self.flags & otelfast.SAMPLED)
        self.trace_state: TraceState | None = ctx[otelfast.STATE]


class TraceFormat(Protocol):
    """One header format for the span context."""

    def extract(self, headers: Headers) -> SpanContext | None: ...

    def inject(self, headers: Headers, ctx: SpanContext) -> None: ...

    def fields(self, ids: Ids) -> Fields:
        """(names this format replaces or removes, fields to append): what `inject` does,
        as data, so several formats can be written in one pass over the headers."""
        ...


def _hex_id(text: str, width: int) -> int | None:
    """A hex id of at most `width` digits (shorter ids are left-padded, as 64-bit B3 and
    Jaeger trace ids are); 0 is invalid."""
    if not text or len(text) > width:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value or None


def _remote(trace_id: int, span_id: int, sampled: bool) -> SpanContext:
    return otelfast.span_context(trace_id, span_id, True, otelfast.SAMPLED if sampled else 0, None)


_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


_W3C = frozenset({"traceparent"})
_W3C_WITH_STATE = frozenset({"traceparent", "tracestate"})
_B3 = frozenset({"b3"})
_B3_MULTI = frozenset({"x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-parentspanid"})
_JAEGER = frozenset({"uber-trace-id"})


class W3CTraceContext:
    """`traceparent` / `tracestate`, parsed and formatted here rather than through OTel's
    propagator: the same rules (W3C Trace Context level 1) at a fraction of the cost, since
    this runs on every request."""

    def extract(self, headers: Headers) -> SpanContext | None:
        value = headers.get("traceparent")
        if not value:
            return None
        m = _TRACEPARENT_RE.fullmatch(value.strip())
        if m is None:
            return None
        version, trace_hex, span_hex, flags_hex, rest = m.groups()
        # Version ff is invalid; version 00 allows nothing after the flags.
        if version == "ff" or (version == "00" and rest):
            return None
        trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
        if not trace_id or not span_id:
            return None
        state = headers.get_all("tracestate")
        return otelfast.span_context(
            trace_id,
            span_id,
            True,
            int(flags_hex, 16) & otelfast.SAMPLED,
            TraceState.from_header(state) if state else None,
        )

    def inject(self, headers: Headers, ctx: SpanContext) -> None:
        headers.replace(*self.fields(Ids(ctx)))

    def fields(self, ids: Ids) -> Fields:
        # Formatted directly: the same output as OTel's propagator at a fraction of the cost
        # (this runs on every forwarded request).
        value = f"00-{ids.trace_hex}-{ids.span_hex}-{_FLAGS_HEX[ids.flags & 0xFF]}"
        state = ids.trace_state
        if state is not None and otelfast.has_state(state):
            return _W3C_WITH_STATE, [
                ("traceparent", value),
                ("tracestate", state.to_header()),
            ]
        return _W3C, [("traceparent", value)]


class B3Single:
    """`b3: {trace}-{span}-{sampled}-{parent}`; sampled 1, 0 or d (debug)."""

    def extract(self, headers: Headers) -> SpanContext | None:
        value = headers.get("b3")
        if not value:
            return None
        parts = value.strip().split("-")
        if len(parts) < 2:
            return None  # "0"/"1"/"d" alone carries only a sampling decision
        trace_id, span_id = _hex_id(parts[0], 32), _hex_id(parts[1], 16)
        if trace_id is None or span_id is None:
            return None
        sampled = len(parts) > 2 and parts[2] in ("1", "d")
        return _remote(trace_id, span_id, sampled)

    def inject(self, headers: Headers, ctx: SpanContext) -> None:
        headers.replace(*self.fields(Ids(ctx)))

    def fields(self, ids: Ids) -> Fields:
        sampled = "1" if ids.sampled else "0"
        return _B3, [("b3", f"{ids.trace_hex}-{ids.span_hex}-{sampled}")]


class B3Multi:
    def extract(self, headers: Headers) -> SpanContext | None:
        raw_trace = headers.get("x-b3-traceid")
        raw_span = headers.get("x-b3-spanid")
        if raw_trace is None or raw_span is None:
            return None
        trace_id, span_id = _hex_id(raw_trace.strip(), 32), _hex_id(raw_span.strip(), 16)
        if trace_id is None or span_id is None:
            return None
        sampled = (
            headers.get("x-b3-sampled", "") in ("1", "true") or headers.get("x-b3-flags") == "1"
        )
        return _remote(trace_id, span_id, sampled)

    def inject(self, headers: Headers, ctx: SpanContext) -> None:
        headers.replace(*self.fields(Ids(ctx)))

    def fields(self, ids: Ids) -> Fields:
        # x-b3-parentspanid is only removed: a parent id from the caller would now be stale
        # (the span id below is our span).
        return _B3_MULTI, [
            ("x-b3-traceid", ids.trace_hex),
            ("x-b3-spanid", ids.span_hex),
            ("x-b3-sampled", "1" if ids.sampled else "0"),
        ]


class JaegerUberTraceId:
    """`uber-trace-id: {trace}:{span}:{parent (deprecated, 0)}:{flags}`; flag bit 1 = sampled."""

    def extract(self, headers: Headers) -> SpanContext | None:
        value = headers.get("uber-trace-id")
        if not value:
            return None
        parts = value.replace("%3A", ":").replace("%3a", ":").strip().split(":")
        if len(parts) != 4:
            return None
        trace_id, span_id = _hex_id(parts[0], 32), _hex_id(parts[1], 16)
        if trace_id is None or span_id is None:
            return None
        try:
            flags = int(parts[3], 16)
        except ValueError:
            return None
        return _remote(trace_id, span_id, bool(flags & 1))

    def inject(self, headers: Headers, ctx: SpanContext) -> None:
        headers.replace(*self.fields(Ids(ctx)))

    def fields(self, ids: Ids) -> Fields:
        flags = "1" if ids.sampled else "0"
        return _JAEGER, [("uber-trace-id", f"{ids.trace_hex}:{ids.span_hex}:0:{flags}")]


FORMATS: dict[str, type[TraceFormat]] = {
    "tracecontext": W3CTraceContext,
    "b3": B3Single,
    "b3multi": B3Multi,
    "jaeger": JaegerUberTraceId,
}


class HeaderPropagator:
    """Extracts a parent Context from request headers and injects a span into headers."""

    __slots__ = ("_baggage", "_formats", "_unions", "names")

    def __init__(self, names: Iterable[str] = ("tracecontext", "baggage")) -> None:
        wanted = [n for n in names if n in FORMATS]
        if "tracecontext" not in wanted:
            wanted.insert(0, "tracecontext")
        seen: list[str] = []
        for n in wanted:
            if n not in seen:
                seen.append(n)
        self.names: Sequence[str] = tuple(seen)
        self._formats: tuple[TraceFormat, ...] = tuple(FORMATS[n]() for n in self.names)
        self._baggage = W3CBaggagePropagator()
        self._unions: dict[tuple[frozenset[str], ...], frozenset[str]] = {}

    def extract(self, headers: Headers) -> Context:
        ctx = Context()
        if "baggage" in headers:
            ctx = self._baggage.extract(headers, ctx, getter=GETTER)
        for fmt in self._formats:
            sc = fmt.extract(headers)
            if sc is not None:
                return otelfast.with_span(NonRecordingSpan(sc), ctx)
        return ctx

    def inject(self, headers: Headers, context: Context) -> None:
        """Write the span of `context` (and its baggage) in every configured format."""
        self.inject_ids(headers, otelfast.span_context_of(context))
        if otelfast.has_baggage(context):
            self._baggage.inject(headers, context, setter=SETTER)

    def inject_ids(self, headers: Headers, sc: SpanContext) -> None:
        """Write `sc` in every configured format (no baggage: `inject` adds a context's)."""
        if otelfast.is_valid(sc):
            # Every format's fields in one rebuild of the list (the names are disjoint, so
            # this is the same as injecting each format in turn).
            formats, ids = self._formats, Ids(sc)
            if len(formats) == 1:
                names, fields = formats[0].fields(ids)
            else:
                parts: list[frozenset[str]] = []
                fields = []
                for fmt in formats:
                    n, f = fmt.fields(ids)
                    parts.append(n)
                    fields += f
                # The union of the formats' name sets, made once per combination (each
                # format returns one of a few constant sets) rather than per request.
                key = tuple(parts)
                union = self._unions.get(key)
                if union is None:
                    union = frozenset().union(*parts)
                    self._unions[key] = union
                names = union
            headers.replace(names, fields)
