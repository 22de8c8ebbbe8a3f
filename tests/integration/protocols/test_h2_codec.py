"""What a real HTTP/2 client sees of the sidecar's own codec at the edges: a malformed request
or an oversized request head costs that stream, not the connection its neighbours share."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import h2.errors
import h2.events

from tests.doubles.h2_upstream import H2Upstream
from tests.integration.protocols.test_h2_attacks import RawH2, request_headers, start


async def _answers(raw: RawH2, want: set[int]) -> dict[int, object]:
    """Per stream: its response status (bytes) or the RST_STREAM error code."""
    got: dict[int, object] = {}
    async with asyncio.timeout(5):
        while not want <= set(got):
            data = await raw.reader.read(65536)
            assert data, f"connection closed with {got}"
            for ev in raw.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id is not None:
                    got[ev.stream_id] = dict(ev.headers or [])[b":status"]
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id is not None:
                    got[ev.stream_id] = ev.error_code
            await raw.flush()
    return got


async def test_a_malformed_request_resets_its_stream_only(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory)
    raw = await RawH2.open(port)
    # h2 would refuse to send an upper-case name: validation off for this client
    raw.conn.config.validate_outbound_headers = False
    raw.conn.config.normalize_outbound_headers = False
    raw.conn.send_headers(1, [*request_headers(), ("X-Upper", "v")], end_stream=True)
    raw.conn.send_headers(3, request_headers("/users/3"), end_stream=True)
    await raw.flush()
    got = await _answers(raw, {1, 3})
    assert got == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR, 3: b"200"}
    assert sc.state.started_requests == 1  # the malformed one never reached a layer
    raw.writer.close()


async def test_an_oversized_request_head_is_431_on_its_stream(upstreams, sidecar_factory):
    sc, port = await start(upstreams, sidecar_factory, limits={"max_header_bytes": 8192})
    raw = await RawH2.open(port)
    raw.conn.send_headers(1, [*request_headers(), ("x-big", "v" * 10_000)], end_stream=True)
    raw.conn.send_headers(3, request_headers("/users/3"), end_stream=True)
    await raw.flush()
    assert await _answers(raw, {1, 3}) == {1: b"431", 3: b"200"}
    raw.writer.close()


async def test_small_and_large_bodies_reach_an_h2c_upstream_whole(sidecar_factory):
    """A body in memory that fits the upstream's windows goes out with the request head; a
    larger one is written as the windows open. Both arrive whole and in order."""
    up = await H2Upstream().start()
    try:
        sc = await sidecar_factory(
            {
                "service": {"name": "caller", "port": up.port},
                "discovery": {"static": {"h2svc": [f"127.0.0.1:{up.port}"]}},
                "upstreams": {"h2svc": {"protocol": "h2c"}},
            }
        )
        port = sc.bound_port("listeners.outbound")
        async with aiohttp.ClientSession() as s:
            for size in (1, 100, 16_384, 16_385, 200_000):
                async with s.post(
                    f"http://127.0.0.1:{port}/upload",
                    data=b"x" * size,
                    headers={"Host": "h2svc"},
                ) as r:
                    assert r.status == 200
                    assert json.loads(await r.read())["body_len"] == size
    finally:
        await up.stop()
