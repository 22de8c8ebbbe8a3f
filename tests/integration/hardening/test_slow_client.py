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


async def _sidecar(upstreams: Any, sidecar_factory: Any) -> tuple[Any, Any]:
    up = await upstreams(UPSTREAM)
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": up.port},
            "discovery": {"static": {UPSTREAM: [f"127.0.0.1:{up.port}"]}},
            # Defaults otherwise: five consecutive failures open the breaker and eject.
            "upstreams": {"default": {"timeouts": TIMEOUTS}},
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
