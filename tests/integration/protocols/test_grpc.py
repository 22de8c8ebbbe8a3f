"""Real grpcio clients and servers through the sidecar, outbound and inbound."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from sidecar.app import Sidecar
from tests.doubles.grpc_upstream import channel, method


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
