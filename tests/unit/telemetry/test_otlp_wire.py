"""Our OTLP span encoder against the SDK's: for every span shape, the bytes it writes parse to
the same `ExportTraceServiceRequest` the SDK encoder builds, and they are byte for byte the
SDK's `SerializeToString()`.

Bytes are compared in every case: we write fields in field-number order, as upb serializes,
and the SDK's encoder leaves the same fields unset, so no case here needs an exception. A
NaN double is compared as bytes only (NaN != NaN fails message equality)."""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as encode_spans_sdk,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from sidecar.telemetry import otlp_wire
from sidecar.telemetry.otlp_wire import encode_spans

RESOURCE = Resource.create({"service.name": "bff", "service.version": "1.2.3"})
OTHER_RESOURCE = Resource({"service.name": "other", "k8s.pod.uid": "abc"}, "https://schema/1")
SCOPE = InstrumentationScope("sidecar", "0.1")
SCOPED = InstrumentationScope("lib", None, "https://schema/2", {"scope.attr": 7})
TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = TraceFlags(TraceFlags.SAMPLED)

EVERY_VALUE: dict[str, Any] = {
    "str": "text",
    "empty.str": "",
    "unicode": "héllo ☃",
    "bool.true": True,
    "bool.false": False,
    "int": 200,
    "int.zero": 0,
    "int.negative": -5,
    "int.min": -(1 << 63),
    "int.max": (1 << 63) - 1,
    "float": 1.5,
    "float.zero": 0.0,
    "float.negzero": -0.0,
    "float.inf": math.inf,
    "bytes": b"\x00\xff",
    "empty.bytes": b"",
    "str.array": ("a", "b"),
    "int.array": [1, 2, 3],
    "bool.array": (True, False),
    "float.array": (0.5,),
    "empty.array": (),
    "mixed.array": ["a", 1, None, b"x", ["nested"], {"in": "map"}],
    "map": {"a": 1, "b": {"c": "d"}, 3: "int key"},
    "none": None,
    "long": "x" * 300,
}


def ctx(span_id: int, *, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(TRACE, span_id, remote, SAMPLED, state)


def span(
    name: str = "GET /api",
    *,
    span_id: int = 0x00F067AA0BA902B7,
    parent: SpanContext | None = None,
    state: TraceState | None = None,
    kind: SpanKind = SpanKind.SERVER,
    attributes: Mapping[str, Any] | None = None,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
    status: Status | None = None,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    start: int | None = 1_700_000_000_000_000_000,
    end: int | None = 1_700_000_000_000_250_000,
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=ctx(span_id, state=state),
        parent=parent,
        resource=resource,
        attributes=attributes,  # type: ignore[arg-type]
        events=events,
        links=links,
        kind=kind,
        status=status if status is not None else Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def assert_same(spans: Sequence[ReadableSpan], *, nan: bool = False) -> None:
    ours = encode_spans(spans)
    sdk = encode_spans_sdk(spans)
    if not nan:
        assert ExportTraceServiceRequest.FromString(ours) == sdk
    assert ours == sdk.SerializeToString()


def bounded(attributes: dict[str, Any], maxlen: int) -> BoundedAttributes:
    return BoundedAttributes(maxlen, attributes, immutable=False)


CASES: dict[str, list[ReadableSpan]] = {
    "empty batch": [],
    "root server span": [
        span(attributes={"http.request.method": "GET", "http.response.status_code": 200})
    ],
    "child of a remote parent": [span(parent=ctx(0xABC, remote=True), kind=SpanKind.CLIENT)],
    "child of a local parent": [span(parent=ctx(0xABC), kind=SpanKind.INTERNAL)],
    "trace state": [span(state=TraceState([("vendor", "v1"), ("other", "x=y")]))],
    "empty trace state": [span(state=TraceState())],
    "every attribute value type": [span(attributes=EVERY_VALUE)],
    "every span kind": [span(kind=k, span_id=i + 1) for i, k in enumerate(SpanKind)],
    "events with attributes": [
        span(
            events=[
                Event("retry", {"attempt": 2, "reason": "reset"}, timestamp=1_700_000_000_1),
                Event("bare", None, timestamp=5),
                Event("zero time", {"a": "b"}, timestamp=0),
            ]
        )
    ],
    "links": [
        span(
            links=[
                Link(ctx(0x1, remote=True), {"link.kind": "follows"}),
                Link(SpanContext(TRACE + 1, 0x2, False, SAMPLED, TraceState([("a", "b")]))),
            ]
        )
    ],
    "error status with message": [span(status=Status(StatusCode.ERROR, "upstream reset"))],
    "ok status": [span(status=Status(StatusCode.OK))],
    "dropped counts": [
        ReadableSpan(
            name="dropped",
            context=ctx(0x9),
            resource=RESOURCE,
            attributes=bounded({f"k{i}": i for i in range(5)}, 3),
            events=BoundedList.from_seq(1, [Event("a", timestamp=1), Event("b", timestamp=2)]),
            links=BoundedList.from_seq(1, [Link(ctx(0x1)), Link(ctx(0x2))]),
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.UNSET),
            start_time=1,
            end_time=2,
            instrumentation_scope=SCOPE,
        )
    ],
    "event with dropped attributes": [
        span(events=[Event("e", bounded({"a": 1, "b": 2, "c": 3}, 1), timestamp=3)])
    ],
    "unstarted span, empty name": [span(name="", start=None, end=None)],
    "several resources and scopes": [
        span(span_id=1),
        span(span_id=2, resource=OTHER_RESOURCE),
        span(span_id=3, scope=SCOPED),
        span(span_id=4, scope=None),
        span(span_id=5),
        # Equal to RESOURCE but another object: grouped with it, as the SDK's dict does.
        span(
            span_id=6,
            resource=Resource.create({"service.name": "bff", "service.version": "1.2.3"}),
        ),
        span(span_id=7, resource=OTHER_RESOURCE, scope=SCOPED),
    ],
    "resource without attributes": [span(resource=Resource({}))],
    "repeated attributes across spans": [
        span(span_id=i + 1, attributes={"route": "api", "port": 8080, "flag": i % 2 == 0})
        for i in range(40)
    ],
    # bool/int and -0.0/0.0 compare equal: a cache keyed on values must not mix them up.
    "equal values of different types": [
        span(span_id=1, attributes={"v": 1, "w": 0.0}),
        span(span_id=2, attributes={"v": True, "w": -0.0}),
        span(span_id=3, attributes={"v": 1.0, "w": 0}),
        span(span_id=4, attributes={"v": "1", "w": False}),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_request_as_the_sdk(name: str) -> None:
    assert_same(CASES[name])


def test_nan_double_same_bytes() -> None:
    assert_same([span(attributes={"nan": math.nan, "arr": [math.nan]})], nan=True)


def test_unencodable_attributes_are_left_out_like_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    attrs = {
        "before": "kept",
        "too.big": 1 << 64,
        "object": object(),
        "array.with.bad": [1, object()],
        "after": 3,
    }
    assert_same([span(attributes=attrs)])
    decoded = ExportTraceServiceRequest.FromString(encode_spans([span(attributes=attrs)]))
    keys = [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["before", "after"]
    assert "Failed to encode key too.big" in caplog.text


def test_an_unknown_span_kind_fails_the_batch_like_the_sdk() -> None:
    bad = span()
    bad._kind = "weird"  # type: ignore[assignment]
    with pytest.raises(KeyError):
        encode_spans_sdk([bad])
    with pytest.raises(KeyError):
        encode_spans([bad])


def test_pause_is_called_between_slices_of_spans() -> None:
    spans = [span(span_id=i + 1) for i in range(100)]
    calls: list[int] = []
    ours = encode_spans(spans, lambda: calls.append(1), every=32)
    assert len(calls) == 3  # after 32, 64 and 96 spans
    assert ours == encode_spans_sdk(spans).SerializeToString()


def test_encoding_a_batch_lets_another_thread_run_between_slices() -> None:
    """While the export thread encodes a large batch, a thread that wakes up every 200 µs
    (the event loop, when a request arrives) gets the GIL within a slice or so, not after the
    interpreter's 5 ms switch interval."""
    batch = [
        span(span_id=i + 1, attributes={"url.path": f"/api/{i}", "server.port": 8080})
        for i in range(3000)
    ]
    started, done = threading.Event(), threading.Event()

    def export_thread() -> None:
        started.set()
        while not done.is_set():
            otlp_wire.export_request(batch)

    thread = threading.Thread(target=export_thread, daemon=True)
    thread.start()
    started.wait(5)
    late: list[float] = []
    try:
        for _ in range(200):
            t0 = time.perf_counter()
            time.sleep(0.0002)
            late.append(time.perf_counter() - t0 - 0.0002)
    finally:
        done.set()
        thread.join(10)
    assert statistics.median(late) < 0.002, f"median wake-up delay {statistics.median(late)}"
    assert sys.getswitchinterval() >= 0.004  # what the delay would be without the pauses


# Hypothesis: random spans, values and batch shapes.
scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
attributes = st.dictionaries(st.text(max_size=12), values, max_size=6)
ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
times = st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1)
states = st.none() | st.lists(
    st.tuples(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    ),
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(TraceState)
contexts = st.builds(
    SpanContext,
    st.integers(min_value=1, max_value=(1 << 128) - 1),
    ids,
    st.booleans(),
    st.sampled_from([TraceFlags(0), SAMPLED]),
    states,
)
events = st.builds(
    Event, st.text(max_size=10), st.none() | attributes, st.integers(0, (1 << 64) - 1)
)
links = st.builds(Link, contexts, st.none() | attributes)
statuses = st.none() | st.builds(
    Status, st.sampled_from(list(StatusCode)), st.none() | st.text(max_size=10)
)
resources = st.sampled_from([RESOURCE, OTHER_RESOURCE, Resource({})])
scopes = st.sampled_from([SCOPE, SCOPED, None])


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    status = draw(statuses)
    return ReadableSpan(
        name=draw(st.text(max_size=20)),
        context=draw(contexts),
        parent=draw(st.none() | contexts),
        resource=draw(resources),
        attributes=draw(attributes),
        events=draw(st.lists(events, max_size=3)),
        links=draw(st.lists(links, max_size=2)),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status if status is not None else Status(StatusCode.UNSET),
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=draw(scopes),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), max_size=6))
def test_random_spans_same_bytes_as_the_sdk(batch: list[ReadableSpan]) -> None:
    assert_same(batch)
