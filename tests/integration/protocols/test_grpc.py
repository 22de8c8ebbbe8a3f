"""Real grpcio clients and servers through the sidecar, outbound and inbound."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from sidecar.app import Sidecar
from tests.conftest import free_port
from tests.doubles.grpc_upstream import channel, method
from tests.integration.hardening.conftest import eventually


def outbound_port(sc: Sidecar) -> int:
    return sc.bound_port("listeners.outbound")


async def greeter_sidecar(sidecar_factory: Any, *ports: int, **extra: Any) -> Sidecar:
    return await sidecar_factory(
        {
            "service": {"name": "caller", "port": ports[0]},
            "discovery": {"static": {"greeter": [f"127.0.0.1:{p}" for p in ports]}},
            **extra,
        }
    )


async def test_unary_outbound_and_inbound(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)
    async with channel(outbound_port(sc), "greeter") as ch:
        assert await method(ch, "unary_unary", "Say")(b"out", timeout=5) == b"hello out"
    # inbound: everything goes to the local app (service.port), here the gRPC server
    async with channel(sc.bound_port("listeners.inbound")) as ch:
        assert await method(ch, "unary_unary", "Say")(b"in", timeout=5) == b"hello in"
    assert up.calls == 2


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
async def test_streaming_kinds(grpc_upstreams, sidecar_factory, direction):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)
    port = sc.bound_port(f"listeners.{direction}")
    async with channel(port, "greeter") as ch:
        got = [m async for m in method(ch, "unary_stream", "Count")(b"5", timeout=5)]
        assert got == [b"0", b"1", b"2", b"3", b"4"]

        async def parts():
            for p in (b"ab", b"cde", b"f"):
                yield p

        assert await method(ch, "stream_unary", "Sum")(parts(), timeout=5) == b"6"

        call = method(ch, "stream_stream", "Chat")(timeout=5)
        for word in (b"one", b"two", b"three"):
            await call.write(word)
            # bidi: each reply arrives before the next message is sent
            assert await call.read() == b"echo " + word
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_deadline_propagates_as_remaining_grpc_timeout(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)
    async with channel(outbound_port(sc), "greeter") as ch:
        assert await method(ch, "unary_unary", "Say")(b"x", timeout=2.0) == b"hello x"
        seen = up.timeouts[-1]
        assert seen is not None and 0.5 < seen < 2.0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(ch, "unary_unary", "Say")(b"slow", timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # (gRPC rounds deadlines to its timer granularity: allow a few ms)
        assert up.timeouts[-1] is not None and up.timeouts[-1] < 0.31


async def test_sidecar_errors_are_grpc_statuses(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)
    async with channel(outbound_port(sc), "nowhere") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(ch, "unary_unary", "Say")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        md = dict(info.value.trailing_metadata() or ())
        assert md.get("x-sidecar-error") == "no_route"
    await up.stop()  # the only endpoint is gone: connect failures
    async with channel(outbound_port(sc), "greeter") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(ch, "unary_unary", "Say")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        md = dict(info.value.trailing_metadata() or ())
        assert md.get("x-sidecar-error") == "upstream_connect_failure"


async def test_cancelled_call_is_cancelled_upstream(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)
    async with channel(outbound_port(sc), "greeter") as ch:
        call = method(ch, "unary_unary", "Say")(b"slow", timeout=10)
        await asyncio.wait_for(up.started_slow.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: up.cancelled == 1)


async def test_unavailable_is_retried_then_breaker_opens_fast(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(
        sidecar_factory,
        up.port,
        upstreams={
            "greeter": {
                "retries": {"attempts": 2, "on": ["unavailable"], "backoff_base": "1ms"},
                "circuit_breaker": {"consecutive_failures": 2, "minimum_requests": 100},
                "outlier_detection": {"enabled": False},
            }
        },
    )
    async with channel(outbound_port(sc), "greeter") as ch:
        say = method(ch, "unary_unary", "Say")
        up.fail_next = 2
        assert await say(b"again", timeout=5) == b"hello again"  # two retries hid it
        assert up.calls == 3
        # an upstream that stays UNAVAILABLE: retries run out, the caller gets UNAVAILABLE
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await say(b"unavailable", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert up.calls == 3 + 2 * 3
        assert sc.breakers["greeter"].snapshot()["state"] == "open"
        calls = up.calls
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await say(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(info.value.trailing_metadata() or ()).get("x-sidecar-error") == "circuit_open"
        assert loop.time() - start < 0.5 and up.calls == calls  # answered by the sidecar


async def test_two_replicas_one_dead_no_failed_calls(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    dead = free_port()
    sc = await greeter_sidecar(
        sidecar_factory, up.port, dead, upstreams={"default": {"load_balancer": "round_robin"}}
    )
    async with channel(outbound_port(sc), "greeter") as ch:
        say = method(ch, "unary_unary", "Say")
        for i in range(20):
            assert await say(str(i).encode(), timeout=5) == b"hello " + str(i).encode()
    assert up.calls == 20


async def test_large_streamed_message_with_bounded_memory(grpc_upstreams, sidecar_factory):
    up = await grpc_upstreams()
    sc = await greeter_sidecar(sidecar_factory, up.port)

    def held() -> int:
        inside = sum(c.buffered_bytes() for c in sc.h2_connections.connections)
        return inside + sc.h2_client.buffered_bytes()

    async with channel(outbound_port(sc), "greeter") as ch:
        # 50 MiB as 50 streamed messages of 1 MiB, to a caller that stops reading a while
        stream = method(ch, "unary_stream", "Blob")(b"50:1048576", timeout=60)
        total = len(await stream.read())
        # Let the upstream push as hard as it can: what the sidecar holds settles at its
        # flow-control windows (the caller's socket buffers and grpc's own take the rest).
        samples: list[int] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end and (len(samples) < 10 or len(set(samples[-5:])) > 1):
            samples.append(held())
            await asyncio.sleep(0.02)
        assert max(samples) <= 2 * 1024 * 1024, samples
        while (msg := await stream.read()) is not grpc.aio.EOF:
            total += len(msg)
    assert total == 50 * 1024 * 1024
    assert await stream.code() == grpc.StatusCode.OK
