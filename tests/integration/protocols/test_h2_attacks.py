"""HTTP/2 abuse leaves the sidecar serving others: rapid reset (CVE-2023-44487) and
CONTINUATION floods (CVE-2024-27316) get GOAWAY and a closed connection; GOAWAY on drain lets
in-flight streams finish."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame

from tests.integration.hardening.conftest import assert_error, eventually, exchange


class RawH2:
    """A client that writes whatever frames a test wants and collects h2 events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.events: list[h2.events.Event] = []

    @classmethod
    async def open(cls, port: int) -> RawH2:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(r, w)
        raw.conn.initiate_connection()
        await raw.flush()
        return raw

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def read_until_closed(self, timeout: float = 5.0) -> list[h2.events.Event]:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return self.events
                if not data:
                    return self.events
                try:
                    self.events.extend(self.conn.receive_data(data))
                except h2.exceptions.ProtocolError:
                    return self.events

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for ev in self.events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                return ev
        return None


def request_headers(path: str = "/users/1", host: str = "user-service") -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", path)]


async def still_serving(port: int) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/users/2", headers={"Host": "user-service"}) as r:
            assert r.status == 200


async def start(upstreams: Any, sidecar_factory: Any, **extra: Any) -> tuple[Any, int]:
    up = await upstreams("user-service")
    sc = await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
            **extra,
        }
    )
    return sc, sc.bound_port("listeners.outbound")


async def test_rapid_reset_gets_enhance_your_calm(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory)
    raw = await RawH2.open(port)
    try:
        for _ in range(1000):
            sid = raw.conn.get_next_available_stream_id()
            raw.conn.send_headers(sid, request_headers(), end_stream=True)
            raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            await raw.flush()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass  # closed on us mid-attack: that is the point
    await raw.read_until_closed()
    ev = raw.goaway()
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    await still_serving(port)
    raw.writer.close()
    await eventually(lambda: not sc.h2_connections.connections)


async def test_continuation_flood_is_cut_off(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory)
    raw = await RawH2.open(port)
    block = raw.conn.encoder.encode(request_headers())
    head = HeadersFrame(1, data=block[:5])  # no END_HEADERS: CONTINUATION frames follow
    raw.writer.write(head.serialize())
    sent = 0
    try:
        for _ in range(2000):  # 2000 x 16 KiB = 32 MiB if nobody stopped it
            raw.writer.write(ContinuationFrame(1, data=b"\x00" * 16000).serialize())
            await raw.writer.drain()
            sent += 1
    except ConnectionError:
        pass
    await raw.read_until_closed()
    assert sent < 2000 or raw.reader.at_eof()
    ev = raw.goaway()
    assert ev is not None and ev.error_code != h2.errors.ErrorCodes.NO_ERROR
    await still_serving(port)
    raw.writer.close()
    await eventually(lambda: not sc.h2_connections.connections)


async def test_too_many_header_fields_is_refused_not_forwarded(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory)
    raw = await RawH2.open(port)
    fields = request_headers() + [(f"x-h{i}", "v") for i in range(150)]
    raw.conn.send_headers(1, fields, end_stream=True)
    await raw.flush()
    status = None
    async with asyncio.timeout(5):
        while status is None:
            data = await raw.reader.read(65536)
            assert data
            for ev in raw.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
    assert status == b"431"
    raw.writer.close()


async def test_drain_sends_goaway_and_in_flight_streams_finish(upstreams, sidecar_factory):
    up = await upstreams("user-service")
    up.release = asyncio.Event()
    sc = await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
        }
    )
    port = sc.bound_port("listeners.outbound")
    raw = await RawH2.open(port)
    raw.conn.send_headers(1, request_headers("/slow"), end_stream=True)
    await raw.flush()
    await eventually(lambda: any(s.path_qs == "/slow" for s in up.seen))
    drain = asyncio.create_task(sc.drain(timeout=5))
    # Read raw frames: h2's client state machine refuses frames after a GOAWAY, but the
    # point of a graceful GOAWAY is that stream 1 still completes.
    buf = b""
    async with asyncio.timeout(5):
        while GoAwayFrame.type not in [f.type for f in frames(buf)]:
            buf += await raw.reader.read(65536)
        goaway = next(f for f in frames(buf) if isinstance(f, GoAwayFrame))
        assert goaway.last_stream_id == 1 and goaway.error_code == 0
        up.release.set()
        while data := await raw.reader.read(65536):
            buf += data
    ends = [f for f in frames(buf) if f.stream_id == 1 and "END_STREAM" in f.flags]
    assert ends, "stream 1 did not finish after the GOAWAY"
    heads = [f for f in frames(buf) if isinstance(f, HeadersFrame) and f.stream_id == 1]
    assert raw.conn.decoder.decode(heads[0].data)[0] == (":status", "200")
    assert await drain is True


def frames(buf: bytes) -> list[Frame]:
    out = []
    while len(buf) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
        if len(buf) < 9 + length:
            break
        frame.parse_body(memoryview(buf[9 : 9 + length]))
        out.append(frame)
        buf = buf[9 + length :]
    return out


async def test_preface_then_garbage_is_a_protocol_error_never_forwarded(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory)
    up = sc  # nothing may reach the upstream: no request may even start
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\nHost: user-service\r\n\r\n")
    await w.drain()
    buf = b""
    async with asyncio.timeout(5):
        while data := await r.read(65536):
            buf += data
    goaways = [f for f in frames(buf) if isinstance(f, GoAwayFrame)]
    # "GET" read as a frame length is 4.6 MB: refused from the 9-byte header, not buffered
    assert goaways and goaways[0].error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    assert up.state.started_requests == 0
    w.close()
    await still_serving(port)


async def test_http2_connections_hold_their_listener_budget(upstreams, sidecar_factory):
    """An HTTP/2 connection keeps the listener slot of the connection it came in on: opening
    HTTP/2 connections must not be a way around `max_connections`. While it has a stream open
    it is never evicted; once idle, a newcomer may take its slot (it gets a GOAWAY)."""
    up = await upstreams("user-service")
    up.release = asyncio.Event()
    sc = await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
            "listeners": {"outbound_max_connections": 2},
        }
    )
    port = sc.bound_port("listeners.outbound")
    raws = []
    for _ in range(2):
        raw = await RawH2.open(port)
        raw.conn.send_headers(1, request_headers("/slow"), end_stream=True)
        await raw.flush()
        raws.append(raw)
    await eventually(lambda: sum(s.path_qs == "/slow" for s in up.seen) == 2)
    get = b"GET /x HTTP/1.1\r\nHost: user-service\r\nConnection: close\r\n\r\n"
    ex = await exchange(port, get)
    assert_error(ex.responses[0], 503, "overloaded")

    up.release.set()
    for raw in raws:  # both streams finish: both connections are idle now
        async with asyncio.timeout(5):
            while not any(isinstance(e, h2.events.StreamEnded) for e in raw.events):
                data = await raw.reader.read(65536)
                assert data, "closed before the response ended"
                raw.events.extend(raw.conn.receive_data(data))
    ex = await exchange(port, get)
    assert [r.status for r in ex.responses] == [200]
    # The one idle longest made room, with a GOAWAY; the other is still open.
    await raws[0].read_until_closed()
    assert raws[0].goaway() is not None
    assert sc.h2_connections.connections and len(sc.h2_connections.connections) == 1
    for raw in raws:
        raw.writer.close()
