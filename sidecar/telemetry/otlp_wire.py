"""OTLP span export requests written straight to protobuf wire bytes.

The SDK's encoder (`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`)
builds a protobuf message object per span, attribute and value: ~33 µs a span, all of it
holding the GIL on the export thread, so requests on the event loop wait behind a batch. This
module writes the same `ExportTraceServiceRequest` into one bytearray (compiled with mypyc).
It mirrors the SDK encoder field for field: the same grouping (resource, then scope, in first-
seen order), the same fields left out, the same attributes skipped (logged) when a value can't
be encoded. tests/unit/telemetry/test_otlp_wire.py holds it to the SDK's bytes.

A nested message is written in place after its tag; its length is then inserted in front of
it (`out[start:start] = varint`), which moves only that message's own bytes.

Field numbers: opentelemetry-proto, collector/trace/v1/trace_service.proto,
trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from sidecar.telemetry import otelfast

_logger = logging.getLogger(__name__)

Pause = Callable[[], None]

# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
_F1: Final = 0x0A  # field 1, length-delimited (resource_spans, resource, scope, key, ...)
_F2: Final = 0x12  # field 2, length-delimited
_F3: Final = 0x1A
# Span
_SPAN_TRACE_ID: Final = b"\x0a\x10"  # 16 bytes follow
_SPAN_SPAN_ID: Final = b"\x12\x08"
_SPAN_TRACE_STATE: Final = 0x1A
_SPAN_PARENT_ID: Final = b"\x22\x08"
_SPAN_NAME: Final = 0x2A
_SPAN_KIND: Final = 0x30
_SPAN_START: Final = 0x39
_SPAN_END: Final = 0x41
_SPAN_ATTRIBUTE: Final = 0x4A
_SPAN_DROPPED_ATTRIBUTES: Final = 0x50
_SPAN_EVENT: Final = 0x5A
_SPAN_DROPPED_EVENTS: Final = 0x60
_SPAN_LINK: Final = 0x6A
_SPAN_DROPPED_LINKS: Final = 0x70
_SPAN_STATUS: Final = 0x7A
_SPAN_FLAGS: Final = b"\x85\x01"  # field 16, fixed32
# Span.Event
_EVENT_TIME: Final = 0x09
_EVENT_NAME: Final = 0x12
_EVENT_ATTRIBUTE: Final = 0x1A
_EVENT_DROPPED_ATTRIBUTES: Final = 0x20
# Span.Link
_LINK_TRACE_ID: Final = b"\x0a\x10"
_LINK_SPAN_ID: Final = b"\x12\x08"
_LINK_ATTRIBUTE: Final = 0x22
_LINK_DROPPED_ATTRIBUTES: Final = 0x28
_LINK_FLAGS: Final = 0x35  # field 6, fixed32
# Status
_STATUS_MESSAGE: Final = 0x12
_STATUS_CODE: Final = 0x18
# AnyValue
_ANY_STRING: Final = 0x0A
_ANY_BOOL: Final = 0x10
_ANY_INT: Final = 0x18
_ANY_DOUBLE: Final = 0x21
_ANY_ARRAY: Final = 0x2A
_ANY_KVLIST: Final = 0x32
_ANY_BYTES: Final = 0x3A
# ResourceSpans / ScopeSpans: 1 resource|scope, 2 scope_spans|spans, 3 schema_url.
# InstrumentationScope: 1 name, 2 version, 3 attributes. Resource: 1 attributes.

# SpanFlags: the SDK marks every span and link as knowing whether its parent is remote.
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200

# Enum members as module constants: the compiled module reads them without a class lookup.
_SERVER: Final = SpanKind.SERVER
_CLIENT: Final = SpanKind.CLIENT
_INTERNAL: Final = SpanKind.INTERNAL
_PRODUCER: Final = SpanKind.PRODUCER
_CONSUMER: Final = SpanKind.CONSUMER
_ERROR: Final = StatusCode.ERROR
_OK: Final = StatusCode.OK

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64: Final = 1 << 64

_DOUBLE: Final = struct.Struct("<d")
_FIXED64: Final = struct.Struct("<Q")
_FIXED32: Final = struct.Struct("<I")

_Group = dict[InstrumentationScope | None, list[ReadableSpan]]
# Encoded KeyValues (length-prefixed, without the field tag) of str and int attributes, by
# (key, value): a batch repeats most of them (method, route, address, port, status).
_Cache = dict[tuple[str, object], bytes]
_CACHE_MAX: Final = 4096


# The export thread encodes in slices of SLICE spans (~100 µs compiled) and sleeps PAUSE
# seconds between them: a compiled loop never yields the GIL on its own, so without this the
# event loop waits for the interpreter's 5 ms switch interval whenever a request arrives during
# a batch; a sleep(0) hands the GIL over only when the waiting thread wins the race to take it.
SLICE: Final = 32
PAUSE: Final = 0.00005


def _let_the_loop_run() -> None:
    time.sleep(PAUSE)


def export_request(spans: Sequence[ReadableSpan]) -> bytes:
    """`encode_spans` for the export thread: in slices, letting the event loop run between."""
    return encode_spans(spans, _let_the_loop_run, SLICE)


def encode_spans(
    spans: Sequence[ReadableSpan], pause: Pause | None = None, every: int = 32
) -> bytes:
    """The serialized `ExportTraceServiceRequest` of `spans`, as the SDK's encoder would
    serialize it. `pause`, when given, is called after every `every` spans: the export
    thread lets the event loop run there (a compiled loop never yields the GIL on its own)."""
    groups: dict[Resource, _Group] = {}
    # Spans of one batch nearly all share one resource and scope object: skip the hashing
    # (Resource hashes a JSON dump of its attributes) while they do.
    last_resource: Resource | None = None
    last_scope: InstrumentationScope | None = None
    last: list[ReadableSpan] = []
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        if last_resource is None or resource is not last_resource or scope is not last_scope:
            by_scope = groups.get(resource)
            if by_scope is None:
                by_scope = {}
                groups[resource] = by_scope
            found = by_scope.get(scope)
            if found is None:
                found = []
                by_scope[scope] = found
            last, last_resource, last_scope = found, resource, scope
        last.append(span)

    out = bytearray()
    cache: _Cache = {}
    done = 0
    for resource, by_scope in groups.items():
        out.append(_F1)  # ExportTraceServiceRequest.resource_spans
        resource_spans = len(out)
        out.append(_F1)  # ResourceSpans.resource
        start = len(out)
        _attributes(out, _F1, resource.attributes, cache)
        _close(out, start)
        for scope, members in by_scope.items():
            out.append(_F2)  # ResourceSpans.scope_spans
            scope_spans = len(out)
            out.append(_F1)  # ScopeSpans.scope
            start = len(out)
            if scope is not None:
                _string(out, _F1, scope.name)
                _string(out, _F2, scope.version)
                _attributes(out, _F3, scope.attributes, cache)
            _close(out, start)
            for span in members:
                out.append(_F2)  # ScopeSpans.spans
                start = len(out)
                _span(out, span, cache)
                _close(out, start)
                done += 1
                if pause is not None and done % every == 0:
                    pause()
            if scope is not None:
                _string(out, _F3, scope.schema_url)
            _close(out, scope_spans)
        _string(out, _F3, resource.schema_url)
        _close(out, resource_spans)
    return bytes(out)


def _span(out: bytearray, span: ReadableSpan, cache: _Cache) -> None:
    context: SpanContext = span.context
    trace_id: int = context[otelfast.TRACE_ID]
    span_id: int = context[otelfast.SPAN_ID]
    out += _SPAN_TRACE_ID
    out += trace_id.to_bytes(16, "big")
    out += _SPAN_SPAN_ID
    out += span_id.to_bytes(8, "big")
    state = cast("TraceState | None", context[otelfast.STATE])
    if state is not None and otelfast.has_state(state):
        _string(out, _SPAN_TRACE_STATE, ",".join([f"{k}={v}" for k, v in state.items()]))
    parent = span.parent
    if parent is not None:
        out += _SPAN_PARENT_ID
        out += parent.span_id.to_bytes(8, "big")
    _string(out, _SPAN_NAME, span.name)
    out.append(_SPAN_KIND)
    out.append(_kind(span.kind))
    start_time = span.start_time
    if start_time:
        out.append(_SPAN_START)
        out += _FIXED64.pack(start_time)
    end_time = span.end_time
    if end_time:
        out.append(_SPAN_END)
        out += _FIXED64.pack(end_time)
    _attributes(out, _SPAN_ATTRIBUTE, span.attributes, cache)
    _count(out, _SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes)
    for event in span.events:
        out.append(_SPAN_EVENT)
        start = len(out)
        _event(out, event, cache)
        _close(out, start)
    _count(out, _SPAN_DROPPED_EVENTS, span.dropped_events)
    for link in span.links:
        out.append(_SPAN_LINK)
        start = len(out)
        _link(out, link, cache)
        _close(out, start)
    _count(out, _SPAN_DROPPED_LINKS, span.dropped_links)
    status = span.status
    if status is not None:
        out.append(_SPAN_STATUS)
        start = len(out)
        _status(out, status)
        _close(out, start)
    out += _SPAN_FLAGS
    out += _FIXED32.pack(_flags(parent))


def _kind(kind: SpanKind) -> int:
    # SpanKind.X.value + 1, without the enum's interpreted `value` property.
    if kind is _SERVER:
        return 2
    if kind is _CLIENT:
        return 3
    if kind is _INTERNAL:
        return 1
    if kind is _PRODUCER:
        return 4
    if kind is _CONSUMER:
        return 5
    raise KeyError(kind)  # the SDK's map lookup fails the batch the same way


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _event(out: bytearray, event: Event, cache: _Cache) -> None:
    timestamp = event.timestamp
    if timestamp:
        out.append(_EVENT_TIME)
        out += _FIXED64.pack(timestamp)
    _string(out, _EVENT_NAME, event.name)
    _attributes(out, _EVENT_ATTRIBUTE, event.attributes, cache)
    _count(out, _EVENT_DROPPED_ATTRIBUTES, event.dropped_attributes)


def _link(out: bytearray, link: Link, cache: _Cache) -> None:
    context = link.context
    out += _LINK_TRACE_ID
    out += context.trace_id.to_bytes(16, "big")
    out += _LINK_SPAN_ID
    out += context.span_id.to_bytes(8, "big")
    _attributes(out, _LINK_ATTRIBUTE, link.attributes, cache)
    _count(out, _LINK_DROPPED_ATTRIBUTES, link.dropped_attributes)
    out.append(_LINK_FLAGS)
    out += _FIXED32.pack(_flags(context))


def _status(out: bytearray, status: Status) -> None:
    _string(out, _STATUS_MESSAGE, status.description)
    code = status.status_code
    if code is _ERROR:
        out.append(_STATUS_CODE)
        out.append(2)
    elif code is _OK:
        out.append(_STATUS_CODE)
        out.append(1)


def _attributes(
    out: bytearray, tag: int, attributes: Mapping[str, Any] | None, cache: _Cache
) -> None:
    """Each attribute as a KeyValue under `tag`; one whose value can't be encoded is left out
    and logged, as the SDK does."""
    if not attributes:
        return
    for key, value in attributes.items():
        mark = len(out)
        try:
            out.append(tag)
            # Only exact str and int values: they encode alike exactly when they are equal
            # (True == 1 and 0.0 == -0.0 do not).
            kind = type(value)
            if (kind is str or kind is int) and type(key) is str:
                entry = (key, value)
                cached = cache.get(entry)
                if cached is None:
                    start = len(out)
                    _key_value(out, key, value)
                    cached = bytes(out[start:])
                    if len(cache) < _CACHE_MAX:
                        cache[entry] = cached
                else:
                    out += cached
            else:
                _key_value(out, key, value)
        except Exception as error:
            del out[mark:]
            _logger.exception("Failed to encode key %s: %s", key, error)


def _key_value(out: bytearray, key: str, value: object) -> None:
    start = len(out)
    data = key.encode()
    if data:
        out.append(_F1)
        _varint(out, len(data))
        out += data
    out.append(_F2)  # KeyValue.value
    inner = len(out)
    _any_value(out, value)
    _close(out, inner)
    _close(out, start)


def _any_value(out: bytearray, value: object) -> None:
    """The fields of an AnyValue (without its own tag and length). A oneof member is written
    even when it holds its type's default (False, 0, "")."""
    if value is None:
        return
    if isinstance(value, bool):
        out.append(_ANY_BOOL)
        out.append(1 if value else 0)
    elif isinstance(value, str):
        data = value.encode()
        out.append(_ANY_STRING)
        _varint(out, len(data))
        out += data
    elif isinstance(value, int):
        if value < _INT64_MIN or value > _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        out.append(_ANY_INT)
        _varint(out, value + _UINT64 if value < 0 else value)
    elif isinstance(value, float):
        out.append(_ANY_DOUBLE)
        out += _DOUBLE.pack(value)
    elif isinstance(value, bytes):
        out.append(_ANY_BYTES)
        _varint(out, len(value))
        out += value
    elif isinstance(value, Sequence):
        out.append(_ANY_ARRAY)
        array = len(out)
        for item in value:
            out.append(_F1)  # ArrayValue.values
            start = len(out)
            _any_value(out, item)
            _close(out, start)
        _close(out, array)
    elif isinstance(value, Mapping):
        out.append(_ANY_KVLIST)
        kvlist = len(out)
        for k, v in value.items():
            out.append(_F1)  # KeyValueList.values
            _key_value(out, str(k), v)
        _close(out, kvlist)
    else:
        raise TypeError(f"Invalid type {type(value)} of value {value}")


def _string(out: bytearray, tag: int, value: str | None) -> None:
    """A string field; proto3 leaves out an empty one (and the SDK passes None as unset)."""
    if value:
        data = value.encode()
        out.append(tag)
        _varint(out, len(data))
        out += data


def _count(out: bytearray, tag: int, value: int) -> None:
    if value:
        out.append(tag)
        _varint(out, value)


def _varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _close(out: bytearray, start: int) -> None:
    """Insert the length of the message written since `start` in front of it."""
    size = len(out) - start
    if size < 0x80:
        out.insert(start, size)
        return
    prefix = bytearray()
    _varint(prefix, size)
    out[start:start] = prefix
