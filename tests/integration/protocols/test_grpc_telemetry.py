"""OTel RPC conventions on the spans of gRPC calls, and the RPC histograms."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import grpc
import pytest

from tests.doubles.grpc_upstream import channel, method


def admin_get(sc, path: str) -> str:
    with urllib.request.urlopen(f"http://{sc.config.listeners.admin}{path}", timeout=5) as r:
        return r.read().decode()


async def test_grpc_spans_and_metrics_name_methods_and_status_codes(
    grpc_upstreams, sidecar_factory
):
    up = await grpc_upstreams()
    sc = await sidecar_factory(
        {
            "service": {"name": "echo", "port": up.port},
            "discovery": {"static": {"greeter": [f"127.0.0.1:{up.port}"]}},
        }
    )
    async with channel(sc.bound_port("listeners.inbound")) as ch:
        assert await method(ch, "unary_unary", "Say")(b"a", timeout=5) == b"hello a"
        got = [m async for m in method(ch, "unary_stream", "Count")(b"3", timeout=5)]
        assert len(got) == 3
        with pytest.raises(grpc.aio.AioRpcError):
            await method(ch, "unary_unary", "Say")(b"unavailable", timeout=5)
    text = await asyncio.to_thread(admin_get, sc, "/metrics")
    line = (
        'rpc_server_duration_seconds_count{rpc_grpc_status_code="%s",rpc_method="%s",'
        'rpc_service="test.Echo",rpc_system="grpc",service="echo"}'
    )
    assert line % ("0", "Say") in text
    assert line % ("0", "Count") in text
    assert line % ("14", "Say") in text
    assert 'rpc_client_duration_seconds_count{rpc_grpc_status_code="14",rpc_method="Say"' in text
    traces = json.loads(await asyncio.to_thread(admin_get, sc, "/debug/traces?service=echo"))
    spans = [s for t in traces["data"] for s in t["spans"]]
    names = {s["operationName"] for s in spans}
    assert {"test.Echo/Say", "test.Echo/Count"} <= names
    tags = [
        {t["key"]: t["value"] for t in s["tags"]}
        for s in spans
        if s["operationName"] == "test.Echo/Say"
    ]
    codes = sorted({int(t["rpc.grpc.status_code"]) for t in tags})
    assert codes == [0, 14]
    assert all(t["rpc.system"] == "grpc" and t["rpc.method"] == "Say" for t in tags)
