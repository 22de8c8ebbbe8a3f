"""The trace model `diagnose` works on, and the parser of Jaeger's query-API JSON.

Jaeger's `/api/traces` answer, the sidecars' `/debug/traces` and the Jaeger UI's "download JSON"
all share one shape (REFERENCES.md); anything malformed inside it is skipped rather than fatal,
because real trace stores hold partial and odd data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TagValue = str | int | float | bool


class TraceFormatError(ValueError):
    """The payload is not Jaeger query-API JSON at all."""


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    operation: str
    service: str
    start_us: int
    duration_us: int
    tags: Mapping[str, TagValue] = field(default_factory=dict)
    # True when the parent link is FOLLOWS_FROM: the parent does not wait for this span.
    follows_from: bool = False

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us

    @property
    def kind(self) -> str:
        return str(self.tags.get("span.kind", "")).lower()


@dataclass(frozen=True, slots=True)
class Trace:
    trace_id: str
    spans: tuple[Span, ...]


def parse_jaeger(payload: Any) -> list[Trace]:
    """`{"data": [trace, ...]}`, a list of traces, or a single trace object → traces."""
    if isinstance(payload, Mapping) and "data" in payload:
        items = payload["data"]
        if items is None:
            return []
    elif isinstance(payload, Mapping) and "spans" in payload:
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise TraceFormatError('not Jaeger trace JSON (expected {"data": [...]} or a trace)')
    if not isinstance(items, list):
        raise TraceFormatError('not Jaeger trace JSON ("data" is not a list)')
    traces = [_trace(item) for item in items if isinstance(item, Mapping)]
    return [t for t in traces if t.spans]


def merge_traces(batches: Iterable[Iterable[Trace]]) -> list[Trace]:
    """Merge traces from several sources by trace id, each span once. Every sidecar only holds
    its own spans, so one request's trace arrives in pieces from each admin endpoint."""
    spans_by_trace: dict[str, dict[str, Span]] = {}
    for batch in batches:
        for trace in batch:
            merged = spans_by_trace.setdefault(trace.trace_id, {})
            for span in trace.spans:
                merged.setdefault(span.span_id, span)
    return [Trace(tid, tuple(spans.values())) for tid, spans in spans_by_trace.items()]


def _trace(raw: Mapping[str, Any]) -> Trace:
    processes = raw.get("processes")
    services: dict[str, str] = {}
    if isinstance(processes, Mapping):
        for pid, proc in processes.items():
            if isinstance(proc, Mapping):
                services[str(pid)] = str(proc.get("serviceName", ""))
    trace_id = str(raw.get("traceID") or "").strip().lower()
    spans = []
    for item in raw.get("spans") or ():
        span = _span(item, services, trace_id) if isinstance(item, Mapping) else None
        if span is not None:
            spans.append(span)
    if not trace_id and spans:
        trace_id = spans[0].trace_id
    return Trace(trace_id, tuple(spans))


def _span(raw: Mapping[str, Any], services: Mapping[str, str], trace_id: str) -> Span | None:
    span_id = norm_id(raw.get("spanID"))
    start, duration = raw.get("startTime"), raw.get("duration")
    if not span_id or not isinstance(start, int | float) or not isinstance(duration, int | float):
        return None
    parent_id, follows = _parent(raw.get("references"))
    if parent_id is None and raw.get("parentSpanID"):  # older Jaeger JSON
        parent_id = norm_id(raw.get("parentSpanID"))
    service = services.get(str(raw.get("processID", "")), "")
    if not service and isinstance(raw.get("process"), Mapping):
        service = str(raw["process"].get("serviceName", ""))
    return Span(
        trace_id=str(raw.get("traceID") or trace_id).strip().lower(),
        span_id=span_id,
        parent_id=parent_id if parent_id != span_id else None,
        operation=str(raw.get("operationName", "")),
        service=service or "unknown",
        start_us=int(start),
        duration_us=max(0, int(duration)),
        tags=_tags(raw.get("tags")),
        follows_from=follows,
    )


def _parent(refs: Any) -> tuple[str | None, bool]:
    """CHILD_OF wins over FOLLOWS_FROM when a span has both."""
    follows: str | None = None
    for ref in refs or ():
        if not isinstance(ref, Mapping):
            continue
        span_id = norm_id(ref.get("spanID"))
        if not span_id:
            continue
        kind = str(ref.get("refType", "CHILD_OF")).upper()
        if kind == "CHILD_OF":
            return span_id, False
        if follows is None:
            follows = span_id
    return follows, follows is not None


def _tags(raw: Any) -> dict[str, TagValue]:
    out: dict[str, TagValue] = {}
    for tag in raw or ():
        if isinstance(tag, Mapping) and "key" in tag:
            value = tag.get("value")
            if isinstance(value, str | int | float | bool):
                out[str(tag["key"])] = value
            elif value is not None:
                out[str(tag["key"])] = str(value)
    return out


def norm_id(value: Any) -> str:
    """Span ids are hex; some exporters drop leading zeros, so compare them without."""
    text = str(value or "").strip().lower()
    return text.lstrip("0") or ("0" if text else "")
