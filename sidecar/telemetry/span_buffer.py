"""A bounded ring buffer of recently finished spans, served as Jaeger query-API JSON.

It is a span processor (like OTel's in-memory exporter, but bounded), filled whether or not an
exporter is configured, so `/debug/traces` and `sidecar diagnose --admin` work without Jaeger.
Ending a span costs one deque append; the conversion to JSON happens only when queried."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

_KIND = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
    SpanKind.INTERNAL: "internal",
}


class SpanBuffer(SpanProcessor):
    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        # deque.append with maxlen is atomic, so spans may end on any thread.
        self._spans: deque[ReadableSpan] = deque(maxlen=max_spans)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self.max_spans:
            self._spans.append(_compact(span))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._spans)

    def spans(self) -> list[ReadableSpan]:
        return list(self._spans)

    def query(
        self,
        *,
        service: str | None = None,
        operation: str | None = None,
        lookback: float | None = None,
        limit: int = 20,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Traces with a span matching service/operation that started within `lookback`
        seconds, newest first, at most `limit`; each trace holds all its buffered spans."""
        spans = self.spans()
        by_trace: dict[int, list[ReadableSpan]] = {}
        for s in spans:
            if s.context is not None:
                by_trace.setdefault(s.context.trace_id, []).append(s)
        since_ns = 0
        if lookback is not None:
            since_ns = int(((time.time() if now is None else now) - lookback) * 1e9)
        matches: list[tuple[int, int]] = []  # (newest matching start, trace id)
        for trace_id, members in by_trace.items():
            newest = -1
            for s in members:
                start = s.start_time or 0
                if start < since_ns:
                    continue
                if service is not None and _service_name(s) != service:
                    continue
                if operation is not None and s.name != operation:
                    continue
                newest = max(newest, start)
            if newest >= 0:
                matches.append((newest, trace_id))
        matches.sort(reverse=True)
        data = [jaeger_trace(by_trace[tid]) for _, tid in matches[: max(0, limit)]]
        return {"data": data, "total": len(data), "limit": limit, "offset": 0, "errors": None}


def _compact(span: ReadableSpan) -> ReadableSpan:
    """The same span without the SDK's bounded containers (each an OrderedDict or deque
    with its own lock): ~2.8 -> ~1 KiB per span, and the buffer holds up to 10 000."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=dict(span.attributes or {}),
        events=tuple(span.events),
        links=tuple(span.links),
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _service_name(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name", "")) if span.resource else ""


def _tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, list | tuple):
        return {"key": key, "type": "string", "value": ",".join(str(v) for v in value)}
    return {"key": key, "type": "string", "value": str(value)}


def _tags(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [_tag(k, v) for k, v in (attributes or {}).items()]


def jaeger_trace(spans: list[ReadableSpan]) -> dict[str, Any]:
    """One trace in the Jaeger query-API shape (REFERENCES.md)."""
    processes: dict[str, dict[str, Any]] = {}
    process_ids: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    out = []
    trace_hex = ""
    for s in sorted(spans, key=lambda x: x.start_time or 0):
        ctx = s.context
        assert ctx is not None  # grouped by trace id above
        trace_hex = f"{ctx.trace_id:032x}"
        res_attrs = dict(s.resource.attributes) if s.resource else {}
        svc = str(res_attrs.pop("service.name", ""))
        key = (svc, tuple(sorted((k, str(v)) for k, v in res_attrs.items())))
        pid = process_ids.get(key)
        if pid is None:
            pid = f"p{len(process_ids) + 1}"
            process_ids[key] = pid
            processes[pid] = {"serviceName": svc, "tags": _tags(res_attrs)}
        references = []
        if s.parent is not None and s.parent.is_valid:
            references.append(
                {
                    "refType": "CHILD_OF",
                    "traceID": f"{s.parent.trace_id:032x}",
                    "spanID": f"{s.parent.span_id:016x}",
                }
            )
        tags = _tags(s.attributes)
        tags.append({"key": "span.kind", "type": "string", "value": _KIND.get(s.kind, "internal")})
        if s.status.status_code is StatusCode.ERROR:
            tags.append({"key": "error", "type": "bool", "value": True})
            tags.append({"key": "otel.status_code", "type": "string", "value": "ERROR"})
            if s.status.description:
                tags.append(
                    {
                        "key": "otel.status_description",
                        "type": "string",
                        "value": s.status.description,
                    }
                )
        start = s.start_time or 0
        end = s.end_time or start
        out.append(
            {
                "traceID": trace_hex,
                "spanID": f"{ctx.span_id:016x}",
                "operationName": s.name,
                "references": references,
                "startTime": start // 1000,
                "duration": (end - start) // 1000,
                "tags": tags,
                "logs": [
                    {
                        "timestamp": e.timestamp // 1000,
                        "fields": [_tag("event", e.name), *_tags(e.attributes)],
                    }
                    for e in s.events
                ],
                "processID": pid,
                "flags": int(ctx.trace_flags),
                "warnings": None,
            }
        )
    return {"traceID": trace_hex, "spans": out, "processes": processes, "warnings": None}
