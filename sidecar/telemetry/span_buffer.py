"""A bounded ring buffer of recently finished spans, served as Jaeger query-API JSON.

It is a span processor (like OTel's in-memory exporter, but bounded), filled whether or not an
exporter is configured, so `/debug/traces` and `sidecar diagnose --admin` work without Jaeger.
Ending a span packs it into one bytes record and appends it; spans are rebuilt, and converted
to JSON, only when queried."""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

_KIND = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
    SpanKind.INTERNAL: "internal",
}

# Records grouped or matched between two yields of a query (~0.1 ms of work).
_STEP = 256
# A /debug/traces answer is cut after this much JSON (a trace is about 1 KiB).
MAX_DUMP_BYTES = 4 * 1024 * 1024


# One buffered span: the provider's resource and scope (shared by all its spans), its name
# (interned: names come from a bounded set of routes), and the rest packed (see _pack).
_Record = tuple[Resource | None, InstrumentationScope | None, str, bytes]


class SpanBuffer(SpanProcessor):
    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        # deque.append with maxlen is atomic, so spans may end on any thread.
        self._spans: deque[_Record] = deque(maxlen=max_spans)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self.max_spans:
            self._spans.append(_pack(span))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._spans)

    def spans(self) -> list[ReadableSpan]:
        return [_unpack(record) for record in list(self._spans)]

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
        selected = run_to_end(self._select(service, operation, lookback, limit, now))
        data = [jaeger_trace([_unpack(r) for r in members]) for members in selected]
        return {"data": data, "total": len(data), "limit": limit, "offset": 0, "errors": None}

    def query_json(
        self,
        *,
        service: str | None = None,
        operation: str | None = None,
        lookback: float | None = None,
        limit: int = 20,
        now: float | None = None,
        max_bytes: int = MAX_DUMP_BYTES,
    ) -> Generator[None, None, bytes]:
        """`query` as JSON bytes, built in small steps: the generator yields between them
        (every few hundred records, every trace) so the admin server can hand the event loop
        back to the data path; its return value is the body. Traces past `max_bytes` of JSON
        are left out (`total` says how many are in)."""
        selected = yield from self._select(service, operation, lookback, limit, now)
        parts: list[str] = []
        size = 0
        for members in selected:
            text = json.dumps(jaeger_trace([_unpack(r) for r in members]), separators=(",", ":"))
            if parts and size + len(text) > max_bytes:
                break
            parts.append(text)
            size += len(text) + 1
            yield
        head = '{"data":[' + ",".join(parts)
        tail = f'],"total":{len(parts)},"limit":{limit},"offset":0,"errors":null}}'
        return (head + tail).encode()

    def _select(
        self,
        service: str | None,
        operation: str | None,
        lookback: float | None,
        limit: int,
        now: float | None,
    ) -> Generator[None, None, list[list[_Record]]]:
        """The members of the matching traces, newest trace first; yields every `_STEP`
        records. Works on a snapshot of the ring: spans that end meanwhile are not in this
        answer."""
        records = list(self._spans)
        yield
        by_trace: dict[int, list[_Record]] = {}
        for i, record in enumerate(records):
            by_trace.setdefault(_trace_id(record), []).append(record)
            if i % _STEP == _STEP - 1:
                yield
        by_trace.pop(0, None)  # spans without a context
        since_ns = 0
        if lookback is not None:
            since_ns = int(((time.time() if now is None else now) - lookback) * 1e9)
        matches: list[tuple[int, int]] = []  # (newest matching start, trace id)
        seen = 0
        for trace_id, members in by_trace.items():
            newest = -1
            for record in members:
                start = _start_time(record)
                if start < since_ns:
                    continue
                if service is not None and _resource_service(record[0]) != service:
                    continue
                if operation is not None and record[2] != operation:
                    continue
                newest = max(newest, start)
            if newest >= 0:
                matches.append((newest, trace_id))
            seen += len(members)
            if seen >= _STEP:
                seen = 0
                yield
        matches.sort(reverse=True)
        return [by_trace[tid] for _, tid in matches[: max(0, limit)]]


T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Run a stepped computation (query_json) without pausing; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


# The attribute keys the telemetry layers set, packed as their index here (a byte or two
# instead of the name in every record); any other key is kept as it is.
_KEYS = (
    "client.address",
    "error.type",
    "http.request.header.x-request-id",
    "http.request.method",
    "http.request.method_original",
    "http.response.status_code",
    "http.route",
    "network.peer.address",
    "network.peer.port",
    "network.protocol.version",
    "server.address",
    "server.port",
    "sidecar.attempt",
    "sidecar.direction",
    "sidecar.endpoint",
    "sidecar.expected_timeout_ms",
    "sidecar.retry_reason",
    "sidecar.upstream",
    "url.path",
    "url.scheme",
)
_KEY_INDEX = {key: i for i, key in enumerate(_KEYS)}


def _flat(attributes: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """Attributes as (key, value, key, value, ...), known keys as their index."""
    out: list[Any] = []
    for key, value in (attributes or {}).items():
        out += (_KEY_INDEX.get(key, key), value)
    return tuple(out)


def _unflat(flat: Sequence[Any]) -> dict[str, Any]:
    keys = (k if isinstance(k, str) else _KEYS[k] for k in flat[::2])
    return dict(zip(keys, flat[1::2], strict=True))


def _pack(span: ReadableSpan) -> _Record:
    """A finished span as one bytes record, ~0.33 KiB for a sidecar span against ~1.1 KiB as a
    ReadableSpan copy (its dicts, tuples and int objects): the buffer holds 10 000 spans by
    default, and at a few hundred sampled requests a second it is full within a minute.
    Pickle is only ever read back from our own records, never from input."""
    ctx, parent = span.context, span.parent
    trace_id = ctx.trace_id if ctx else 0
    fields = (
        ctx.span_id if ctx else 0,
        int(ctx.trace_flags) if ctx else 0,
        parent.span_id if parent else 0,
        parent.is_remote if parent else False,
        span.kind.value,
        span.status.status_code.value,
        span.status.description,
        span.end_time,
        _flat(span.attributes),
        tuple((e.name, e.timestamp, _flat(e.attributes)) for e in span.events),
        tuple(
            (link.context.trace_id, link.context.span_id, _flat(link.attributes))
            for link in span.links
        ),
    )
    # The trace id and start time lead, fixed-width, so a query groups and filters without
    # unpickling.
    head = trace_id.to_bytes(16, "big") + (span.start_time or 0).to_bytes(8, "big")
    blob = head + pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    return span.resource, span.instrumentation_scope, sys.intern(span.name), blob


def _trace_id(record: _Record) -> int:
    return int.from_bytes(record[3][:16], "big")


def _start_time(record: _Record) -> int:
    return int.from_bytes(record[3][16:24], "big")


def _unpack(record: _Record) -> ReadableSpan:
    resource, scope, name, blob = record
    trace_id, start = _trace_id(record), _start_time(record)
    (
        span_id,
        flags,
        parent_id,
        parent_remote,
        kind,
        status_code,
        status_description,
        end,
        attributes,
        events,
        links,
    ) = pickle.loads(blob[24:])
    trace_flags = TraceFlags(flags)
    parent = SpanContext(trace_id, parent_id, parent_remote, trace_flags) if parent_id else None
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, False, trace_flags) if trace_id else None,
        parent=parent,
        resource=resource,
        attributes=_unflat(attributes),
        events=tuple(Event(n, _unflat(a), timestamp=ts) for n, ts, a in events),
        links=tuple(Link(SpanContext(tid, sid, True), _unflat(a)) for tid, sid, a in links),
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), status_description),
        start_time=start or None,
        end_time=end,
        instrumentation_scope=scope,
    )


def _resource_service(resource: Resource | None) -> str:
    return str(resource.attributes.get("service.name", "")) if resource else ""


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
