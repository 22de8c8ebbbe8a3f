"""Spans leave the sidecar as real OTLP (HTTP/protobuf and gRPC) to a receiver double on
loopback; a dead collector neither blocks nor fails requests, and its drops are counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.config import TracingConfig
from sidecar.errors import UpstreamConnectFailure
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.stack import compose
from sidecar.telemetry.layers import ClientTelemetryLayer, ServerTelemetryLayer
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.tracing import Tracing, build_tracing
from tests.conftest import free_port
from tests.doubles.otlp import OtlpReceiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


def build(exporter: str, endpoint: str, metrics: Metrics, **kw: float) -> Tracing:
    config = TracingConfig(
        exporter=exporter,  # type: ignore[arg-type]
        endpoint=endpoint,
        propagators=["tracecontext", "baggage", "b3multi"],
    )
    return build_tracing(
        config,
        "bff",
        on_spans_dropped=metrics.spans_dropped_count,
        schedule_delay=0.05,
        **kw,  # type: ignore[arg-type]
    )


class Upstream:
    """The terminal handler: a double of the upstream that records what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.seen: list[Headers] = []
        self.status = status

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request.headers.copy())
        return Response(self.status, Headers([("content-type", "text/plain")]), BytesBody(b"ok"))


def request(headers: list[tuple[str, str]]) -> Request:
    return Request("GET", "/users/7", Headers(headers), BytesBody(), upstream="user-service")


def stack(tracing: Tracing, metrics: Metrics, terminal: Upstream) -> object:
    return compose(
        [
            ServerTelemetryLayer("outbound", tracing=tracing, metrics=metrics),
            ClientTelemetryLayer(tracing=tracing, metrics=metrics),
        ],
        terminal,
    )


@pytest.mark.parametrize("transport", ["otlp_http", "otlp_grpc"])
async def test_spans_reach_the_collector_with_the_callers_trace(
    receiver: OtlpReceiver, transport: str
) -> None:
    metrics = Metrics("bff", ["/users/{id}"])
    endpoint = receiver.http_endpoint if transport == "otlp_http" else receiver.grpc_endpoint
    tracing = build(transport, endpoint, metrics)
    upstream = Upstream()
    handler = stack(tracing, metrics, upstream)
    response = await handler(  # type: ignore[operator]
        request([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")])
    )
    assert response.status == 200

    await asyncio.to_thread(tracing.force_flush)  # export runs on a thread; keep the loop free
    spans = await receiver.wait_for(lambda s: len(s) >= 2)
    by_kind = {s.kind: s for s in spans}
    server, client = by_kind[2], by_kind[3]
    assert {s.trace_id for s in spans} == {CALLER_TRACE}
    assert server.parent_span_id == CALLER_SPAN
    assert client.parent_span_id == server.span_id
    # the upstream saw the caller's trace with our CLIENT span as its parent
    (sent,) = upstream.seen
    assert sent.get("traceparent") == f"00-{CALLER_TRACE}-{client.span_id}-01"
    assert sent.get("x-b3-spanid") == client.span_id
    assert server.service_name == client.service_name == "bff"
    assert server.name == client.name == "GET /users/{id}"
    assert server.attributes["http.route"] == "/users/{id}"
    assert server.attributes["http.response.status_code"] == 200
    assert client.attributes["sidecar.upstream"] == "user-service"
    assert {s.transport for s in spans} == {transport.removeprefix("otlp_")}
    await asyncio.to_thread(tracing.shutdown)


async def test_b3_inbound_continues_the_trace(receiver: OtlpReceiver) -> None:
    metrics = Metrics("bff")
    tracing = build("otlp_grpc", receiver.grpc_endpoint, metrics)
    upstream = Upstream()
    handler = stack(tracing, metrics, upstream)
    await handler(  # type: ignore[operator]
        request(
            [("x-b3-traceid", CALLER_TRACE), ("x-b3-spanid", CALLER_SPAN), ("x-b3-sampled", "1")]
        )
    )
    await asyncio.to_thread(tracing.force_flush)
    spans = await receiver.wait_for(lambda s: len(s) >= 2)
    server = next(s for s in spans if s.kind == 2)
    assert server.trace_id == CALLER_TRACE and server.parent_span_id == CALLER_SPAN
    assert upstream.seen[0].get("x-b3-traceid") == CALLER_TRACE
    await asyncio.to_thread(tracing.shutdown)


async def test_failed_attempt_span_is_exported_with_error_type(receiver: OtlpReceiver) -> None:
    metrics = Metrics("bff")
    tracing = build("otlp_http", receiver.http_endpoint, metrics)

    async def refused(request: Request) -> Response:
        raise UpstreamConnectFailure("connect refused", upstream="user-service")

    handler = compose(
        [
            ServerTelemetryLayer("outbound", tracing=tracing, metrics=metrics),
            ClientTelemetryLayer(tracing=tracing, metrics=metrics),
        ],
        refused,
    )
    response = await handler(request([]))
    assert response.status == 502
    await asyncio.to_thread(tracing.force_flush)
    spans = await receiver.wait_for(lambda s: len(s) >= 2)
    for s in spans:
        assert s.attributes["error.type"] == "upstream_connect_failure"
        assert s.status_code == 2
    await asyncio.to_thread(tracing.shutdown)


@pytest.mark.parametrize("transport", ["otlp_http", "otlp_grpc"])
async def test_collector_down_never_blocks_requests_and_counts_drops(transport: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    metrics = Metrics("bff")
    tracing = build(
        transport,
        dead,
        metrics,
        max_queue_size=20,
        max_export_batch_size=10,
        export_timeout=1.0,
        shutdown_timeout=0.5,
    )
    handler = stack(tracing, metrics, Upstream())
    t0 = time.monotonic()
    for _ in range(200):
        response = await handler(request([]))  # type: ignore[operator]
        assert response.status == 200
    spent = time.monotonic() - t0
    assert spent < 5.0  # 400 spans; generous for 2 busy cores

    def dropped() -> float:
        return metrics.registry.get_sample_value("sidecar_spans_dropped_total") or 0.0

    deadline = time.monotonic() + 10
    while dropped() < 400 - 30:  # all but the queue + one batch in flight, at least
        assert time.monotonic() < deadline, dropped()
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    await asyncio.to_thread(tracing.shutdown)
    assert time.monotonic() - t0 < 8.0
    # everything is accounted for once the exporter gave up: all 400 spans dropped
    assert dropped() == 400
    assert len(tracing.buffer) == 400  # /debug/traces still has them


async def test_rejecting_collector_counts_drops(receiver: OtlpReceiver) -> None:
    receiver.reject = True
    metrics = Metrics("bff")
    tracing = build("otlp_http", receiver.http_endpoint, metrics, export_timeout=0.5)
    handler = stack(tracing, metrics, Upstream())
    await handler(request([]))  # type: ignore[operator]
    await asyncio.to_thread(tracing.force_flush)
    assert metrics.registry.get_sample_value("sidecar_spans_dropped_total") == 2
    assert receiver.spans == [] and receiver.rejected >= 1
    await asyncio.to_thread(tracing.shutdown)
