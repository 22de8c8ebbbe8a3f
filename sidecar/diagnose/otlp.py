"""OTLP JSON (what OpenTelemetry collectors' file exporters and `/v1/traces` JSON bodies hold)
→ the same `Trace` model the Jaeger parser produces.

The shape is `ExportTraceServiceRequest` in the OTLP/JSON encoding: `resourceSpans[]` →
`resource.attributes` (with `service.name`) and `scopeSpans[]` → `spans[]`. Per the OTLP
specification ids are hex strings, 64-bit integers are decimal strings and enums are integers;
we also accept what real exporters send besides (base64 ids from a plain protobuf JSON mapping,
numbers for times, enum names, snake_case keys, the older `instrumentationLibrarySpans`).
Anything malformed inside is skipped, not fatal, like the Jaeger parser."""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.diagnose.model import Span, TagValue, Trace, TraceFormatError, norm_id

# OTLP SpanKind enum → the `span.kind` tag values Jaeger uses (1 internal … 5 consumer).
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_HEX = frozenset(string.hexdigits)


def is_otlp(payload: Any) -> bool:
    if isinstance(payload, list):
        return bool(payload) and all(is_otlp(p) for p in payload)
    return isinstance(payload, Mapping) and (
        "resourceSpans" in payload or "resource_spans" in payload
    )


def parse_otlp(payload: Any) -> list[Trace]:
    """One `ExportTraceServiceRequest`, or a list of them (a JSON-lines file's lines)."""
    requests = payload if isinstance(payload, list) else [payload]
    spans: dict[str, list[Span]] = {}
    for request in requests:
        if not isinstance(request, Mapping):
            raise TraceFormatError('not OTLP JSON (expected {"resourceSpans": [...]})')
        for span in _spans(request):
            spans.setdefault(span.trace_id, []).append(span)
    return [Trace(tid, tuple(items)) for tid, items in spans.items() if items]


def _get(raw: Mapping[str, Any], camel: str) -> Any:
    """lowerCamelCase is the OTLP/JSON spelling; protobuf's JSON mapping also allows the
    field's own snake_case name."""
    if camel in raw:
        return raw[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return raw.get(snake)


def _spans(request: Mapping[str, Any]) -> Iterable[Span]:
    for rs in _list(_get(request, "resourceSpans")):
        resource = _get(rs, "resource")
        attrs = _attributes(_get(resource, "attributes") if isinstance(resource, Mapping) else ())
        service = str(attrs.get("service.name") or "unknown")
        scopes = _list(_get(rs, "scopeSpans")) or _list(_get(rs, "instrumentationLibrarySpans"))
        for scope in scopes:
            for raw in _list(_get(scope, "spans")):
                span = _span(raw, service)
                if span is not None:
                    yield span


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _span(raw: Mapping[str, Any], service: str) -> Span | None:
    trace_id = _id(_get(raw, "traceId"))
    span_id = _id(_get(raw, "spanId"))
    start, end = _nanos(_get(raw, "startTimeUnixNano")), _nanos(_get(raw, "endTimeUnixNano"))
    if not trace_id or not span_id or start is None or end is None:
        return None
    tags: dict[str, TagValue] = dict(_attributes(_get(raw, "attributes")))
    kind = _kind(_get(raw, "kind"))
    if kind:
        tags["span.kind"] = kind
    status = _get(raw, "status")
    if isinstance(status, Mapping) and _status_is_error(_get(status, "code")):
        tags["otel.status_code"] = "ERROR"
        message = _get(status, "message")
        if message:
            tags.setdefault("otel.status_description", str(message))
    parent = norm_id(_id(_get(raw, "parentSpanId")))
    own = norm_id(span_id)
    return Span(
        trace_id=trace_id,
        span_id=own,
        parent_id=parent if parent and parent != own else None,
        operation=str(_get(raw, "name") or ""),
        service=service,
        start_us=start // 1000,
        duration_us=max(0, end - start) // 1000,
        tags=tags,
    )


def _id(value: Any) -> str:
    """Hex per the OTLP/JSON spec; base64 (8 or 16 bytes) from exporters that use the
    generic protobuf JSON mapping."""
    text = str(value or "").strip()
    if not text:
        return ""
    if all(c in _HEX for c in text):
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) in (8, 16) else ""


def _nanos(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _kind(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _KINDS.get(value, "")
    text = str(value or "").upper().removeprefix("SPAN_KIND_")
    if text.isdigit():
        return _KINDS.get(int(text), "")
    return text.lower() if text.lower() in _KINDS.values() else ""


def _status_is_error(code: Any) -> bool:
    return code == 2 or str(code).upper() in ("2", "STATUS_CODE_ERROR", "ERROR")


def _attributes(raw: Any) -> dict[str, TagValue]:
    out: dict[str, TagValue] = {}
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, Mapping) and "key" in item:
            value = _value(item.get("value"))
            if value is not None:
                out[str(item["key"])] = value
    return out


def _value(raw: Any) -> TagValue | None:
    """An OTLP `AnyValue`: exactly one of stringValue, boolValue, intValue (a decimal string
    in JSON), doubleValue, arrayValue, kvlistValue, bytesValue."""
    if not isinstance(raw, Mapping):
        return None
    for key, conv in (("stringValue", str), ("boolValue", bool), ("doubleValue", float)):
        value = _get(raw, key)
        if value is not None:
            try:
                return conv(value)
            except (TypeError, ValueError):
                return None
    value = _get(raw, "intValue")
    if value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    array = _get(raw, "arrayValue")
    if isinstance(array, Mapping):
        items = [_value(v) for v in _get(array, "values") or ()]
        return str([v for v in items if v is not None])
    for key in ("kvlistValue", "bytesValue"):
        value = _get(raw, key)
        if value is not None:
            return str(value)
    return None
