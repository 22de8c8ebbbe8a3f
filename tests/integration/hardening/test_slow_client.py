"""A slow client is not a slow upstream (issue 18, finding 4), over real sockets.

The upstream's timers (per-try, total, and what the breaker, outlier detection and EWMA see)
start when the request has been fully received; a client that stalls its own body gets 408
`bad_request` and is never counted against the upstream. Timeouts are shrunk so the test is
fast: per_try 300 ms, total 1 s."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp

from tests.integration.hardening.conftest import UPSTREAM, assert_error, parse_responses

SLOW_HEAD = b"POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n"
TIMEOUTS = {"per_try": "300ms", "total": "1s"}


async def _sidecar(upstreams: Any, sidecar_factory: Any, **policy: Any) -> tuple[Any, Any]:
    up = await upstreams(UPSTREAM)
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": up.port},
            "discovery": {"static": {UPSTREAM: [f"127.0.0.1:{up.port}"]}},
            # Defaults otherwise: five consecutive failures open the breaker and eject.
            "upstreams": {"default": {"timeouts": TIMEOUTS, **policy}},
        }
    )
    return up, sc


async def _trickle(port: int, host: bytes, gap: float, step: int = 1) -> tuple[bytes, float]:
    """Send a 100-byte body `step` bytes every `gap` seconds until the sidecar answers or
    closes; return what came back and when (seconds after the head)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(SLOW_HEAD % host)
    got = b""
    sent = 0
    read = asyncio.ensure_future(reader.read(65536))
    try:
        async with asyncio.timeout(15):
            while True:
                done, _ = await asyncio.wait({read}, timeout=gap)
                if done:
                    chunk = read.result()
                    if not chunk:
                        break
                    got += chunk
                    if any(r.complete for r in parse_responses(got)):
                        break
                    read = asyncio.ensure_future(reader.read(65536))
                    continue
                if sent < 100:
                    writer.write(b"x" * min(step, 100 - sent))
                    sent += step
    finally:
        read.cancel()
        writer.close()
    return got, loop.time() - started


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_slow_body_clients_get_408_and_never_open_the_breaker(upstreams, sidecar_factory):
    up, sc = await _sidecar(upstreams, sidecar_factory)
    port = sc.bound_port("listeners.outbound")
    admin = f"http://127.0.0.1:{sc.admin.port}"
    # 25 clients each announce 100 bytes and send one every 0.5 s: none finishes in time.
    results = await asyncio.gather(*(_trickle(port, UPSTREAM.encode(), 0.5) for _ in range(25)))
    for raw, elapsed in results:
        (resp,) = parse_responses(raw)
        body = assert_error(resp, 408, "bad_request")
        assert "body" in body["message"]
        assert 0.9 <= elapsed < 2.5, elapsed  # at the total timeout, not at per_try
    async with aiohttp.ClientSession() as s:
        # Normal callers right after: served, no circuit_open, nothing ejected.
        statuses = []
        for i in range(20):
            async with s.get(f"http://127.0.0.1:{port}/ok/{i}", headers={"Host": UPSTREAM}) as r:
                statuses.append((r.status, r.headers.get("x-sidecar-error")))
                await r.read()
        assert statuses == [(200, None)] * 20
        async with s.get(f"{admin}/admin/breakers") as r:
            breaker = (await r.json())[UPSTREAM]
        async with s.get(f"{admin}/admin/endpoints") as r:
            (endpoint,) = (await r.json())[UPSTREAM]
        async with s.get(f"{admin}/metrics") as r:
            metrics = await r.text()
    assert breaker["state"] == "closed"
    assert breaker["failures_in_window"] == 0 and breaker["consecutive_failures"] == 0
    assert endpoint["ejected"] is False
    assert endpoint["ewma_ms"] < 250, endpoint  # the clients' 1 s is not the endpoint's latency
    # Counted as the client's error (a bad_request rejection), never as an upstream timeout,
    # a retry or a breaker transition.
    assert _sample(metrics, "sidecar_requests_rejected_total", reason="bad_request") == 25
    assert "upstream_timeout" not in metrics
    assert _sample(metrics, "sidecar_retries_total") == 0
    assert _sample(metrics, "sidecar_circuit_breaker_transitions_total") == 0


async def test_a_body_slower_than_per_try_still_reaches_the_upstream(upstreams, sidecar_factory):
    """10 bytes every 0.1 s: the body takes ~1 s to arrive, three times the per-try timeout,
    but the upstream's 300 ms only start once it has it all."""
    up, sc = await _sidecar(upstreams, sidecar_factory)
    raw, elapsed = await _trickle(sc.bound_port("listeners.outbound"), UPSTREAM.encode(), 0.08, 10)
    (resp,) = parse_responses(raw)
    assert resp.status == 200, (resp.status, resp.body)
    assert json.loads(resp.body)["len"] == 100
    assert elapsed >= 0.6
    assert [s.body_len for s in up.seen] == [100]


async def test_inbound_slow_body_gets_408_too(upstreams, sidecar_factory):
    up, sc = await _sidecar(upstreams, sidecar_factory)
    raw, elapsed = await _trickle(sc.bound_port("listeners.inbound"), b"bff", 0.5)
    (resp,) = parse_responses(raw)
    assert_error(resp, 408, "bad_request")
    assert re.search(r"within 1s", resp.json()["message"])
    assert 0.9 <= elapsed < 2.5, elapsed
    assert up.seen == []  # the local app never got a whole request
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{sc.admin.port}/metrics") as r:
            metrics = await r.text()
    server = "http_server_request_duration_seconds_count"
    assert _sample(metrics, server, http_response_status_code="408", error_type="bad_request") == 1


async def _h2_trickle(port: int, gap: float, step: int = 1) -> tuple[dict[str, str], bytes, float]:
    """`_trickle` over HTTP/2 (prior knowledge): a POST announcing 100 bytes, its DATA sent
    `step` bytes every `gap` seconds until the sidecar answers the stream."""
    import h2.config
    import h2.connection
    import h2.events

    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    head = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", UPSTREAM),
        (":path", "/echo"),
        ("content-length", "100"),
    ]
    conn.send_headers(1, head)
    writer.write(conn.data_to_send())
    started = loop.time()
    headers: dict[str, str] = {}
    body = b""
    sent = 0
    read = asyncio.ensure_future(reader.read(65536))
    try:
        async with asyncio.timeout(15):
            while True:
                done, _ = await asyncio.wait({read}, timeout=gap)
                if done:
                    data = read.result()
                    if not data:
                        break
                    ended = False
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            headers = {k.decode(): v.decode() for k, v in ev.headers}
                        elif isinstance(ev, h2.events.DataReceived):
                            body += ev.data
                            conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                        elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                            ended = True
                    writer.write(conn.data_to_send())
                    if ended:
                        break
                    read = asyncio.ensure_future(reader.read(65536))
                    continue
                if sent < 100:
                    n = min(step, 100 - sent)
                    sent += n
                    conn.send_data(1, b"x" * n, end_stream=sent == 100)
                    writer.write(conn.data_to_send())
    finally:
        read.cancel()
        writer.close()
    return headers, body, loop.time() - started


async def test_slow_http2_body_clients_get_408_and_never_open_the_breaker(
    upstreams, sidecar_factory
):
    """The same rule for HTTP/2 callers: the stream's body, not the connection, is what the
    client is slow to send. (The upstream speaks HTTP/1.1: the HTTP/2 caller's requests cross
    over.)"""
    up, sc = await _sidecar(upstreams, sidecar_factory, protocol="http1")
    port = sc.bound_port("listeners.outbound")
    admin = f"http://127.0.0.1:{sc.admin.port}"
    results = await asyncio.gather(*(_h2_trickle(port, 0.5) for _ in range(10)))
    for headers, body, elapsed in results:
        assert headers.get(":status") == "408", (headers, body)
        assert headers.get("x-sidecar-error") == "bad_request"
        assert "body" in json.loads(body)["message"]
        assert 0.9 <= elapsed < 2.5, elapsed  # at the total timeout, not at per_try
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/admin/breakers") as r:
            breaker = (await r.json())[UPSTREAM]
        async with s.get(f"{admin}/metrics") as r:
            metrics = await r.text()
    assert breaker["state"] == "closed"
    assert breaker["failures_in_window"] == 0 and breaker["consecutive_failures"] == 0
    assert "upstream_timeout" not in metrics
    assert _sample(metrics, "sidecar_retries_total") == 0


async def test_an_http2_body_slower_than_per_try_still_reaches_the_upstream(
    upstreams, sidecar_factory
):
    up, sc = await _sidecar(upstreams, sidecar_factory, protocol="http1")
    headers, body, elapsed = await _h2_trickle(sc.bound_port("listeners.outbound"), 0.08, 10)
    assert headers.get(":status") == "200", (headers, body)
    assert json.loads(body)["len"] == 100
    assert elapsed >= 0.6
    assert [s.body_len for s in up.seen] == [100]
