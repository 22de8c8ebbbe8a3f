"""Tracing through the real data path: caller → outbound listener → upstream, spans to an OTLP
receiver double that decodes the real protobuf."""

from __future__ import annotations

import aiohttp
import pytest

from tests.doubles.otlp import OtlpReceiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("exporter", ["otlp_http", "otlp_grpc"])
async def test_upstream_sees_callers_trace_with_our_client_span_as_parent(
    exporter, upstreams, sidecar_factory
):
    receiver = await OtlpReceiver().start()
    try:
        up = await upstreams("user")
        endpoint = receiver.http_endpoint if exporter == "otlp_http" else receiver.grpc_endpoint
        sc = await sidecar_factory(
            {
                "service": {"name": "bff"},
                "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
                "tracing": {"exporter": exporter, "endpoint": endpoint, "ratio": 1.0},
                "metrics": {"route_templates": ["/users/{id}"]},
            }
        )
        out = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"{out}/users/7",
                headers={
                    "Host": "user-service",
                    "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                },
            ) as r,
        ):
            assert r.status == 200
        seen = up.seen[0].headers["traceparent"].split("-")
        assert seen[1] == CALLER_TRACE
        assert seen[2] != CALLER_SPAN  # a new parent: our CLIENT span
        spans = await receiver.wait_for(
            lambda got: any(s.kind == 3 for s in got) and any(s.kind == 2 for s in got)
        )
        server = next(s for s in spans if s.kind == 2)
        client = next(s for s in spans if s.kind == 3)
        assert server.trace_id == client.trace_id == CALLER_TRACE
        assert server.parent_span_id == CALLER_SPAN
        assert client.parent_span_id == server.span_id
        assert client.span_id == seen[2]
        assert client.service_name == "bff"
        assert client.attributes["sidecar.upstream"] == "user-service"
        assert server.name == "GET /users/{id}"
    finally:
        await receiver.stop()


async def test_b3_inbound_headers_continue_the_trace(upstreams, sidecar_factory):
    up = await upstreams("user")
    sc = await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
            "tracing": {"exporter": "none", "propagators": ["tracecontext", "baggage", "b3multi"]},
        }
    )
    out = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{out}/x",
            headers={
                "Host": "user-service",
                "X-B3-TraceId": CALLER_TRACE,
                "X-B3-SpanId": CALLER_SPAN,
                "X-B3-Sampled": "1",
            },
        ) as r,
    ):
        assert r.status == 200
    headers = up.seen[0].headers
    assert headers["traceparent"].split("-")[1] == CALLER_TRACE
    assert headers["x-b3-traceid"] == CALLER_TRACE
    assert headers["x-b3-spanid"] != CALLER_SPAN


async def test_metrics_and_debug_traces_on_admin(upstreams, sidecar_factory):
    up = await upstreams("user")
    sc = await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
            "tracing": {"exporter": "none"},
        }
    )
    out = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
    admin = f"http://{sc.config.listeners.admin}"
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"{out}/x", headers={"Host": "user-service"}) as r:
                assert r.status == 200
        async with s.get(f"{out}/x", headers={"Host": "nope"}) as r:
            assert r.status == 404
            body = await r.json()
            assert len(body["trace_id"]) == 32  # error bodies carry the trace id
        async with s.get(f"{admin}/metrics") as r:
            text = await r.text()
        async with s.get(f"{admin}/debug/traces?service=bff") as r:
            traces = await r.json()
    assert "http_client_request_duration_seconds_count{" in text
    assert 'upstream="user-service"' in text
    assert "sidecar_requests_rejected_total" in text
    assert traces["data"] and traces["data"][0]["spans"]
