"""The pure parts of tunnels: which upgrades are tunnelled, which a policy refuses; and a
tunnel over socket pairs (no HTTP)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sidecar.config import ConfigError, build_config
from sidecar.transport.tunnel import (
    Tunnel,
    TunnelRegistry,
    TunnelState,
    TunnelStats,
    protocol_label,
    refused_upgrade,
    upgrade_tokens,
    wants_tunnel,
)


def test_upgrade_tokens_are_protocol_names() -> None:
    assert upgrade_tokens("WebSocket") == ["websocket"]
    assert upgrade_tokens("foo/2, Bar") == ["foo", "bar"]
    assert protocol_label("") == "unknown"


def test_h2c_is_never_tunnelled() -> None:
    assert wants_tunnel("websocket")
    assert not wants_tunnel("h2c")
    assert not wants_tunnel("websocket, h2c")
    assert not wants_tunnel(" ")


def test_refused_upgrade_names_the_config_key() -> None:
    assert refused_upgrade("websocket", ["websocket"], "chat") is None
    assert refused_upgrade("foo/2", ["foo/1"], "chat") is None
    err = refused_upgrade("websocket, foo", ["websocket"], "chat")
    assert err is not None and err.status == 400 and err.code == "bad_request"
    assert "foo" in err.message and "upstreams.chat.upgrades" in err.message


def test_config_upgrades_default_and_h2c_refused() -> None:
    cfg = build_config({"service": {"name": "a"}}, env={})
    assert cfg.policy("x").upgrades == ["websocket"]
    assert cfg.policy("x").timeouts.stream_idle == 3600.0
    with pytest.raises(ConfigError) as err:
        build_config({"service": {"name": "a"}, "upstreams": {"x": {"upgrades": ["h2c"]}}}, env={})
    assert err.value.problems[0].startswith("upstreams.x.upgrades: h2c cannot be tunnelled")


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A transport (with a dummy protocol) over one end of a socket pair, and the other end."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return transport, theirs


async def _read(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    async with asyncio.timeout(5):
        while len(out) < n:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            out += chunk
    return out


async def test_tunnel_relays_both_ways_and_finishes_when_both_sides_close() -> None:
    loop = asyncio.get_running_loop()
    up_transport, upstream = await _pair()
    down_transport, client = await _pair()
    tunnel = Tunnel(up_transport, upstream="u", protocol="websocket", header="websocket")
    tunnel.hold(b"held")
    registry = TunnelRegistry()
    closed: list[int] = []
    tunnel.on_close(lambda stats: closed.append(stats.bytes_sent))
    run = asyncio.create_task(tunnel.run(down_transport, b"HEAD|", b"early", registry))
    assert await _read(client, 9) == b"HEAD|held"
    assert await _read(upstream, 5) == b"early"
    await loop.sock_sendall(client, b"ping")
    assert await _read(upstream, 4) == b"ping"
    await loop.sock_sendall(upstream, b"pong")
    assert await _read(client, 4) == b"pong"
    assert len(registry) == 1 and tunnel.state is TunnelState.OPEN
    upstream.close()
    assert await _read(client, 1) == b""  # the EOF is passed on: a half-close
    assert not run.done()
    await loop.sock_sendall(client, b"last")  # the other direction still works...
    client.close()  # ...until that side closes too
    stats = await asyncio.wait_for(run, 5)
    assert (stats.bytes_sent, stats.bytes_received) in ((9, 8), (13, 8))
    assert closed == [stats.bytes_sent]
    assert len(registry) == 0 and tunnel.state is TunnelState.CLOSED


async def test_tunnel_closed_before_the_client_attached_reports_once() -> None:
    up_transport, upstream = await _pair()
    tunnel = Tunnel(up_transport, upstream="u", protocol="websocket")
    seen: list[float] = []
    done = asyncio.Event()

    def closed(stats: TunnelStats) -> None:
        seen.append(stats.seconds)
        done.set()

    tunnel.on_close(closed)
    tunnel.close()
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [0.0] and tunnel.state is TunnelState.CLOSED
    upstream.close()


async def test_a_side_that_does_not_read_stops_the_other_side_being_read() -> None:
    loop = asyncio.get_running_loop()
    up_transport, upstream = await _pair()
    down_transport, client = await _pair()
    tunnel = Tunnel(up_transport, upstream="u", protocol="websocket")
    run = asyncio.create_task(tunnel.run(down_transport, b"", b""))
    total = 32 * 1024 * 1024
    sender = asyncio.create_task(loop.sock_sendall(upstream, b"x" * total))
    # The client reads nothing: the sender must stall with the sidecar's buffer bounded
    # (the kernel buffers hold the rest), not with 32 MiB queued in the sidecar.
    peak = 0
    for _ in range(50):
        await asyncio.sleep(0.01)
        peak = max(peak, down_transport.get_write_buffer_size())
    assert not sender.done()
    assert peak <= 1024 * 1024
    got = 0
    async with asyncio.timeout(10):
        while got < total:
            got += len(await loop.sock_recv(client, 1 << 20))
    assert got == total
    await sender
    upstream.close()
    client.close()
    await asyncio.wait_for(run, 5)
