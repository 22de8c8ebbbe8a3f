"""WebSocket (Upgrade) tunnels through both listeners, with real clients and servers:
`websockets` and aiohttp on each side."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from sidecar.app import Sidecar
from tests.conftest import free_port

MIB = 1024 * 1024


class WsEcho:
    """A `websockets` echo server that also closes on request and records close codes."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []
        self.handshakes = 0
        self.port = 0
        self._server: Any = None

    async def handler(self, ws: ServerConnection) -> None:
        self.handshakes += 1
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    await ws.close(int(message.split(":")[1]), "asked to")
                    break
                await ws.send(message)
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    async def start(self) -> WsEcho:
        self._server = await serve(self.handler, "127.0.0.1", 0, max_size=4 * MIB)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def ws_echo() -> AsyncIterator[WsEcho]:
    server = await WsEcho().start()
    yield server
    await server.stop()


def _outbound(sc: Sidecar) -> int:
    return sc.bound_port("listeners.outbound")


def _config(echo_port: int, **timeouts: str) -> dict[str, Any]:
    return {
        "service": {"name": "app", "port": echo_port},
        "discovery": {"static": {"ws-echo": [f"127.0.0.1:{echo_port}"]}},
        "upstreams": {"default": {"timeouts": {"per_try": "1s", "total": "1s", **timeouts}}},
    }


async def _poll(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _sample(sc: Sidecar, name: str, **labels: str) -> float:
    value = sc.metrics.registry.get_sample_value(name, {"service": "app", **labels})
    return 0.0 if value is None else value


async def test_websockets_echo_big_messages_ping_and_close_codes_outbound(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    sc = await sidecar_factory(_config(ws_echo.port))
    port = _outbound(sc)
    async with connect("ws://ws-echo/echo", host="127.0.0.1", port=port, max_size=4 * MIB) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        big = os.urandom(MIB)
        await ws.send(big)
        assert await ws.recv() == big
        latency = await (await ws.ping())
        assert latency >= 0
        await ws.close(4000, "client done")
    await _poll(lambda: bool(ws_echo.close_codes))
    assert ws_echo.close_codes == [4000]

    async with connect("ws://ws-echo/echo", host="127.0.0.1", port=port) as ws:
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

    await _poll(lambda: len(sc.state.tunnels) == 0)
    labels = {"upstream": "ws-echo", "protocol": "websocket"}
    assert _sample(sc, "sidecar_upgrades_total", **labels) == 2
    assert _sample(sc, "sidecar_upgrades_active", **labels) == 0
    assert _sample(sc, "sidecar_tunnel_bytes_total", upstream="ws-echo", direction="sent") > MIB
    assert _sample(sc, "sidecar_tunnel_bytes_total", upstream="ws-echo", direction="received") > MIB
    assert _sample(sc, "sidecar_tunnel_duration_seconds_count", **labels) == 2


async def test_aiohttp_websocket_through_inbound_to_local_app(
    sidecar_factory: Callable[..., Any],
) -> None:
    received: list[int | None] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MIB)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "bye":
                await ws.close(code=4002, message=b"bye")
            elif msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                await ws.send_bytes(msg.data) if isinstance(msg.data, bytes) else await ws.send_str(
                    msg.data
                )
        received.append(ws.close_code)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        sc = await sidecar_factory(_config(app_port))
        url = f"http://127.0.0.1:{sc.bound_port('listeners.inbound')}/ws"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, max_msg_size=4 * MIB) as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "hi"
                big = os.urandom(MIB)
                await ws.send_bytes(big)
                assert (await ws.receive()).data == big
                await ws.send_str("bye")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 4002
        await _poll(lambda: len(sc.state.tunnels) == 0)
        assert _sample(sc, "sidecar_upgrades_total", upstream="app", protocol="websocket") == 1
    finally:
        await runner.cleanup()


async def test_aiohttp_client_to_websockets_server_outbound(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    sc = await sidecar_factory(_config(ws_echo.port))
    url = f"http://127.0.0.1:{_outbound(sc)}/echo"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"Host": "ws-echo"}) as ws:
            await ws.send_str("through aiohttp")
            assert (await ws.receive()).data == "through aiohttp"
            await ws.close(code=4003)
    await _poll(lambda: bool(ws_echo.close_codes))
    assert ws_echo.close_codes == [4003]


async def test_idle_tunnel_outlives_request_timeouts_then_stream_idle_closes_it(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    sc = await sidecar_factory(_config(ws_echo.port, stream_idle="5s"))
    port = _outbound(sc)
    async with connect("ws://ws-echo/", host="127.0.0.1", port=port, ping_interval=None) as ws:
        await asyncio.sleep(3)  # idle, three times the per-try and total timeouts
        await ws.send("still there")
        assert await ws.recv() == "still there"

    short = await sidecar_factory(_config(ws_echo.port, stream_idle="300ms"))
    async with connect(
        "ws://ws-echo/", host="127.0.0.1", port=_outbound(short), ping_interval=None
    ) as ws:
        async with asyncio.timeout(3):
            await ws.wait_closed()
    assert len(short.state.tunnels) == 0


async def test_upgrade_not_allowed_by_policy_is_a_clear_error(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    config = _config(ws_echo.port)
    config["upstreams"]["ws-echo"] = {"upgrades": []}
    sc = await sidecar_factory(config)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect("ws://ws-echo/", host="127.0.0.1", port=_outbound(sc)):
            pass
    response = refused.value.response
    assert response.status_code == 400
    assert response.headers["x-sidecar-error"] == "bad_request"
    assert b"upstreams.ws-echo.upgrades" in response.body
    assert ws_echo.handshakes == 0


async def test_upstream_refusing_the_upgrade_is_forwarded_as_is(
    sidecar_factory: Callable[..., Any], upstreams: Callable[..., Any]
) -> None:
    plain = await upstreams("plain")  # an HTTP server that knows nothing of WebSocket
    config = _config(plain.port)
    config["discovery"]["static"]["plain"] = [f"127.0.0.1:{plain.port}"]
    sc = await sidecar_factory(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", _outbound(sc))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: plain\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")  # the double answers every GET with 200
    assert b"x-sidecar-error" not in head.lower()
    # The upstream saw the upgrade it was asked for.
    assert plain.seen[-1].headers["upgrade"] == "websocket"
    assert "upgrade" in plain.seen[-1].headers["connection"].lower()


async def test_h2c_upgrade_is_answered_over_http1(
    sidecar_factory: Callable[..., Any], upstreams: Callable[..., Any]
) -> None:
    plain = await upstreams("plain")
    config = _config(plain.port)
    config["discovery"]["static"]["plain"] = [f"127.0.0.1:{plain.port}"]
    sc = await sidecar_factory(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", _outbound(sc))
    writer.write(
        b"GET /x HTTP/1.1\r\nHost: plain\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert "upgrade" not in plain.seen[-1].headers  # never asked of the upstream


async def test_200_concurrent_tunnels_and_memory_bound(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    sc = await sidecar_factory(_config(ws_echo.port))
    port = _outbound(sc)
    rss_before = _rss()
    clients = [
        await connect("ws://ws-echo/", host="127.0.0.1", port=port, ping_interval=None)
        for _ in range(200)
    ]
    try:
        await asyncio.gather(*(c.send(f"m{i}") for i, c in enumerate(clients)))
        replies = await asyncio.gather(*(c.recv() for c in clients))
        assert replies == [f"m{i}" for i in range(200)]
        assert len(sc.state.tunnels) == 200
        assert (
            _sample(sc, "sidecar_upgrades_active", upstream="ws-echo", protocol="websocket") == 200
        )
        # Both ends' clients and servers live in this process too: the whole lot, 200
        # WebSocket pairs and the tunnels between them, stays within a few MiB.
        assert _rss() - rss_before < 40 * MIB
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    await _poll(lambda: len(sc.state.tunnels) == 0)
    assert _sample(sc, "sidecar_upgrades_active", upstream="ws-echo", protocol="websocket") == 0
    assert len(sc.state.connections) == 0


async def test_drain_gives_tunnels_the_drain_timeout_then_closes_them(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    sc = await sidecar_factory(_config(ws_echo.port))
    ws = await connect("ws://ws-echo/", host="127.0.0.1", port=_outbound(sc), ping_interval=None)
    drain = asyncio.create_task(sc.drain(timeout=1.0))
    await asyncio.sleep(0.2)
    await ws.send("during drain")  # the tunnel keeps working while the sidecar drains
    assert await ws.recv() == "during drain"
    assert await drain is False  # the open tunnel counted as in flight
    await sc.stop()
    async with asyncio.timeout(3):
        await ws.wait_closed()
    assert len(sc.state.tunnels) == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _raw_upstream(answer: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    """A raw server: reads one request head, writes `answer` in one segment, then echoes
    everything it reads (prefixed by `echo:`). `got` collects what arrived after the head."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        while data := await reader.read(65536):
            got.append(data)
            writer.write(b"echo:" + data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


async def test_bytes_sent_right_after_the_heads_reach_the_other_side(
    sidecar_factory: Callable[..., Any],
) -> None:
    server, port, got = await _raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: custom\r\nConnection: Upgrade\r\n\r\n"
        b"greeting"
    )
    config = _config(port)
    config["discovery"]["static"]["raw"] = [f"127.0.0.1:{port}"]
    config["upstreams"]["raw"] = {"upgrades": ["custom"]}
    sc = await sidecar_factory(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", _outbound(sc))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: raw\r\nConnection: Upgrade\r\nUpgrade: custom\r\n\r\nearly"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: custom" in head.lower()
    expected = b"greetingecho:early"
    seen = b""
    async with asyncio.timeout(5):
        while len(seen) < len(expected):
            seen += await reader.read(100)
    assert seen == expected
    writer.write_eof()  # a half-close passes through; the upstream then closes
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    server.close()
    assert b"".join(got) == b"early"
    await _poll(lambda: len(sc.state.tunnels) == 0)
    assert _sample(sc, "sidecar_upgrades_total", upstream="raw", protocol="custom") == 1


async def test_unsolicited_101_from_upstream_is_an_upstream_reset(
    sidecar_factory: Callable[..., Any],
) -> None:
    server, port, _ = await _raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: custom\r\nConnection: Upgrade\r\n\r\n"
    )
    config = _config(port)
    config["discovery"]["static"]["raw"] = [f"127.0.0.1:{port}"]
    sc = await sidecar_factory(config)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{_outbound(sc)}/"
        async with session.get(url, headers={"Host": "raw"}) as resp:
            assert resp.status == 502
            assert resp.headers["x-sidecar-error"] == "upstream_reset"
            assert "switched protocols" in (await resp.json())["message"]
    server.close()


async def test_span_covers_the_handshake_and_carries_the_tunnel_numbers(
    sidecar_factory: Callable[..., Any], ws_echo: WsEcho
) -> None:
    config = _config(ws_echo.port)
    config["tracing"] = {"exporter": "none", "buffer_spans": 100}
    sc = await sidecar_factory(config)
    async with connect("ws://ws-echo/", host="127.0.0.1", port=_outbound(sc)) as ws:
        await ws.send(os.urandom(1000))  # random: per-message deflate can't shrink it
        await ws.recv()
        await asyncio.sleep(0.3)  # the tunnel lasts longer than its handshake
    await _poll(lambda: len(sc.state.tunnels) == 0)
    await _poll(
        lambda: any(
            "sidecar.tunnel.bytes_sent" in (s.attributes or {}) for s in sc.tracing.buffer.spans()
        )
    )
    span = next(
        s for s in sc.tracing.buffer.spans() if "sidecar.tunnel.bytes_sent" in (s.attributes or {})
    )
    attrs = span.attributes or {}
    assert attrs["http.response.status_code"] == 101
    assert attrs["sidecar.tunnel.protocol"] == "websocket"
    assert attrs["sidecar.tunnel.bytes_sent"] > 1000
    assert attrs["sidecar.tunnel.bytes_received"] > 1000
    assert attrs["sidecar.tunnel.duration_s"] >= 0.3
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e9 < 0.3


async def test_sigterm_on_a_real_process_drains_tunnels_then_exits(
    ws_echo: WsEcho, tmp_path: Path
) -> None:
    outbound = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "service: {name: app}\n"
        f"listeners: {{inbound: '127.0.0.1:{free_port()}', outbound: '127.0.0.1:{outbound}', "
        f"admin: '127.0.0.1:{free_port()}'}}\n"
        f"discovery: {{static: {{ws-echo: ['127.0.0.1:{ws_echo.port}']}}}}\n"
        "tracing: {exporter: none}\nlimits: {drain_timeout: 1s}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            try:
                ws = await connect("ws://ws-echo/", host="127.0.0.1", port=outbound)
                break
            except OSError:
                assert loop.time() < deadline, "sidecar did not start"
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        await ws.send("while draining")  # open tunnels keep working during the drain
        assert await ws.recv() == "while draining"
        async with asyncio.timeout(10):
            await ws.wait_closed()  # then they are closed...
            assert await proc.wait() == 0  # ...and the process exits cleanly
        assert ws.close_code == 1006  # cut, not a close handshake: the sidecar is opaque
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
