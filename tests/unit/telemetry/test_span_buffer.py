from __future__ import annotations

import gc
import json
import time
import tracemalloc
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from sidecar.telemetry.span_buffer import SpanBuffer, run_to_end


def provider(buffer: SpanBuffer, service: str = "bff") -> TracerProvider:
    p = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
    p.add_span_processor(buffer)
    return p


def one_trace(tracer: trace.Tracer, op: str = "GET /context/{id}") -> None:
    server = tracer.start_span(op, kind=SpanKind.SERVER, attributes={"http.route": "/x"})
    ctx = trace.set_span_in_context(server)
    client = tracer.start_span("GET", ctx, kind=SpanKind.CLIENT)
    client.set_attributes(
        {"sidecar.attempt": 2, "sidecar.upstream": "user-service", "x.ok": True, "x.ratio": 0.5}
    )
    client.add_event("retry", {"reason": "503"})
    client.set_status(Status(StatusCode.ERROR))
    client.end()
    server.end()


def test_ring_buffer_is_bounded_and_keeps_newest() -> None:
    buf = SpanBuffer(5)
    tracer = provider(buf).get_tracer("t")
    for i in range(20):
        tracer.start_span(f"op{i}").end()
    assert len(buf) == 5
    assert [s.name for s in buf.spans()] == [f"op{i}" for i in range(15, 20)]


def test_zero_size_buffer_keeps_nothing() -> None:
    buf = SpanBuffer(0)
    provider(buf).get_tracer("t").start_span("x").end()
    assert len(buf) == 0


def test_jaeger_json_shape() -> None:
    buf = SpanBuffer(100)
    one_trace(provider(buf).get_tracer("t"))
    result = buf.query(service="bff")
    assert set(result) == {"data", "total", "limit", "offset", "errors"}
    assert result["total"] == 1
    (t,) = result["data"]
    server, client = t["spans"]
    assert len(t["traceID"]) == 32 and server["traceID"] == t["traceID"] == client["traceID"]
    assert len(server["spanID"]) == 16
    assert server["references"] == []
    assert client["references"] == [
        {"refType": "CHILD_OF", "traceID": t["traceID"], "spanID": server["spanID"]}
    ]
    assert server["operationName"] == "GET /context/{id}"
    assert isinstance(server["startTime"], int) and server["startTime"] > 1_600_000_000_000_000
    assert isinstance(server["duration"], int) and server["duration"] >= 0
    assert client["startTime"] >= server["startTime"]
    tags = {tag["key"]: tag for tag in client["tags"]}
    assert tags["sidecar.attempt"] == {"key": "sidecar.attempt", "type": "int64", "value": 2}
    assert tags["x.ok"]["type"] == "bool" and tags["x.ratio"]["type"] == "float64"
    assert tags["span.kind"]["value"] == "client"
    assert tags["error"]["value"] is True
    assert {t["key"]: t["value"] for t in server["tags"]}["span.kind"] == "server"
    assert client["logs"][0]["fields"][0] == {"key": "event", "type": "string", "value": "retry"}
    assert server["processID"] == client["processID"] == "p1"
    assert t["processes"]["p1"]["serviceName"] == "bff"
    assert all("key" in tag for tag in t["processes"]["p1"]["tags"])


def test_filters_service_operation_limit_lookback() -> None:
    buf = SpanBuffer(1000)
    bff = provider(buf, "bff").get_tracer("t")
    users = provider(buf, "user-service").get_tracer("t")
    for _ in range(3):
        one_trace(bff, "GET /context/{id}")
    one_trace(bff, "GET /health")
    one_trace(users, "GET /users/{id}")

    assert buf.query(service="bff", limit=100)["total"] == 4
    assert buf.query(service="user-service")["total"] == 1
    assert buf.query(service="nobody")["data"] == []
    assert buf.query(service="bff", operation="GET /health")["total"] == 1
    assert buf.query(limit=2)["total"] == 2
    assert buf.query()["total"] == 5  # default limit 20
    # lookback is measured back from `now`
    assert buf.query(lookback=60)["total"] == 5
    assert buf.query(lookback=60, now=time.time() + 3600)["total"] == 0


def test_newest_traces_first() -> None:
    buf = SpanBuffer(100)
    tracer = provider(buf).get_tracer("t")
    for i in range(3):
        tracer.start_span(f"op{i}").end()
    ops = [t["spans"][0]["operationName"] for t in buf.query(limit=2)["data"]]
    assert ops == ["op2", "op1"]


def test_buffered_spans_are_compact_records() -> None:
    # The buffer holds up to 10 000 spans by default: the SDK's span carries bounded
    # containers with locks (~2.8 KiB a span), a plain ReadableSpan copy ~1 KiB; the
    # buffered record is one bytes object (~0.25 KiB here), and reads back the same span.
    buf = SpanBuffer(5000)
    tracer = provider(buf).get_tracer("t")
    for _ in range(50):
        one_trace(tracer)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            one_trace(tracer)
        gc.collect()
        per_span = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    assert per_span < 512, per_span
    client = buf.spans()[-2]
    assert dict(client.attributes or {})["sidecar.upstream"] == "user-service"
    assert [e.name for e in client.events] == ["retry"]


def test_a_buffered_span_reads_back_as_it_ended() -> None:
    buf = SpanBuffer(10)
    tracer = provider(buf).get_tracer("t")
    linked = tracer.start_span("linked")
    linked.end()
    server = tracer.start_span("GET /x", kind=SpanKind.SERVER)
    ctx = trace.set_span_in_context(server)
    attrs: dict[str, Any] = {
        "url.path": "/x?q=1",  # a key packed by index
        "custom.key": "v",  # one kept by name
        "http.request.header.x-request-id": ("abc",),
        "sidecar.attempt": 2,
        "x.float": 0.25,
        "x.bool": False,
    }
    client = tracer.start_span(
        "GET",
        ctx,
        kind=SpanKind.CLIENT,
        attributes=attrs,
        links=[trace.Link(linked.get_span_context(), {"why": "retry of"})],
    )
    client.add_event("retry", {"reason": "503", "n": 1})
    client.set_status(Status(StatusCode.ERROR, "upstream said 503"))
    client.end()
    server.end()
    ended = {s.name: s for s in [linked, server, client]}
    for got in buf.spans():
        want = ended[got.name]
        assert got.context == want.get_span_context()
        assert got.parent == want.parent
        assert got.kind == want.kind
        assert (got.start_time, got.end_time) == (want.start_time, want.end_time)
        assert dict(got.attributes or {}) == dict(want.attributes or {})
        assert got.status.status_code == want.status.status_code
        assert got.status.description == want.status.description
        assert [(e.name, e.timestamp, dict(e.attributes or {})) for e in got.events] == [
            (e.name, e.timestamp, dict(e.attributes or {})) for e in want.events
        ]
        assert [(lk.context.span_id, dict(lk.attributes or {})) for lk in got.links] == [
            (lk.context.span_id, dict(lk.attributes or {})) for lk in want.links
        ]
        assert got.resource is want.resource


def test_stepped_json_equals_the_query_and_yields_often() -> None:
    buf = SpanBuffer(2000)
    tracer = provider(buf).get_tracer("t")
    for i in range(600):
        one_trace(tracer, f"GET /op{i % 7}")
    steps = buf.query_json(service="bff", limit=500)
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as stop:
            body = stop.value
            break
    assert json.loads(body) == buf.query(service="bff", limit=500)
    assert yields >= 500  # one per trace at least: no long stretch without a yield


def test_stepped_json_is_cut_at_max_bytes() -> None:
    buf = SpanBuffer(1000)
    tracer = provider(buf).get_tracer("t")
    for _ in range(100):
        one_trace(tracer)
    body = run_to_end(buf.query_json(limit=100, max_bytes=10_000))
    answer = json.loads(body)
    assert 0 < answer["total"] == len(answer["data"]) < 100
    assert len(body) <= 10_000 + 2_000
