"""Resource limits (DESIGN §3 `limits`) and admin exposure, over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess

import aiohttp
import pytest

from sidecar.admin.server import _is_loopback
from tests.conftest import free_port
from tests.integration.hardening.conftest import (
    UPSTREAM,
    assert_error,
    eventually,
    exchange,
    parse_responses,
)

H = f"Host: {UPSTREAM}\r\n".encode()
GET = b"GET /x HTTP/1.1\r\n" + H + b"\r\n"


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    data = b""
    async with asyncio.timeout(5):
        while not any(r.complete for r in parse_responses(data)):
            chunk = await reader.read(65536)
            assert chunk, "connection closed before a response"
            data += chunk
    return data


async def _read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


# --------------------------------------------------------------------- connections


async def test_connections_over_max_connections_are_refused_when_none_is_idle(guarded):
    up, sc, port = await guarded(limits={"max_connections": 3})
    held = []
    for i in range(3):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /busy%d HTTP/1.1\r\n" % i)  # a head in progress: busy, not idle
        held.append((r, w))
    await eventually(lambda: all(c._url for c in sc.state.connections) and len(held) == 3)
    ex = await exchange(port, GET)
    assert ex.eof
    body = assert_error(ex.responses[0], 503, "overloaded")
    assert "connections" in body["message"]
    assert ex.responses[0].headers["retry-after"] == "1"
    assert len(up.seen) == 0
    # the held connections still work, and a freed slot is usable again
    r, w = held[0]
    w.write(H + b"Connection: close\r\n\r\n")
    assert parse_responses(await _read_to_eof(r))[0].status == 200
    w.close()
    await eventually(lambda: len(sc.state.connections) == 2)
    ex = await exchange(port, b"GET /again HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert [x.status for x in ex.responses] == [200]
    for _, w in held[1:]:
        w.close()


async def test_full_budget_closes_the_oldest_idle_connection_first(guarded):
    up, sc, port = await guarded(limits={"max_connections": 3})
    held = []
    for _ in range(3):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(GET)
        assert parse_responses(await _one_response(r))[0].status == 200
        held.append((r, w))
    # the first connection is used again: the second is now the one idle longest
    held[0][1].write(GET)
    assert parse_responses(await _one_response(held[0][0]))[0].status == 200
    ex = await exchange(port, b"GET /new HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert [x.status for x in ex.responses] == [200]
    assert await _read_to_eof(held[1][0]) == b"", "the oldest idle connection is closed quietly"
    for i in (0, 2):
        held[i][1].write(GET)
        assert parse_responses(await _one_response(held[i][0]))[0].status == 200
    for _, w in held:
        w.close()


async def test_slowloris_head_is_cut_off_at_header_read_timeout(guarded):
    up, sc, port = await guarded(limits={"header_read_timeout": "500ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET / HTTP/1.1\r\n" + H)

    async def trickle() -> None:
        # one byte every 50 ms: bytes keep coming, the head never completes
        for b in b"X-Slow: " + b"a" * 1000:
            writer.write(bytes([b]))
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(trickle())
    try:
        data = await _read_to_eof(reader, timeout=5)
    finally:
        feeder.cancel()
        writer.close()
    elapsed = loop.time() - started
    assert 0.4 < elapsed < 4.0, elapsed
    assert_error(parse_responses(data)[0], 408, "bad_request")
    assert up.connections == 0


async def test_silent_connection_is_closed_quietly_at_header_read_timeout(guarded):
    up, sc, port = await guarded(limits={"header_read_timeout": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _read_to_eof(reader) == b""  # no 408 to a client that said nothing
    writer.close()


async def test_idle_keep_alive_connection_is_closed(guarded):
    up, sc, port = await guarded()
    # There is no config key for the server-side idle timeout yet (ServerLimits.idle_timeout,
    # default 60 s); shorten it on the running sidecar.
    sc.state.limits.idle_timeout = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET)
    first = await _one_response(reader)
    assert parse_responses(first)[0].status == 200
    assert await _read_to_eof(reader) == b""
    writer.close()
    assert len(sc.state.connections) == 0


# --------------------------------------------------------------------- body size


async def test_content_length_over_max_body_bytes_is_413_before_any_upstream_io(guarded):
    up, sc, port = await guarded(limits={"max_body_bytes": "1KiB"})
    ex = await exchange(port, b"POST /u HTTP/1.1\r\n" + H + b"Content-Length: 2048\r\n\r\n")
    assert_error(ex.responses[0], 413, "bad_request")
    assert up.connections == 0


async def test_expect_continue_over_limit_gets_413_not_100(guarded):
    up, sc, port = await guarded(limits={"max_body_bytes": 1024})
    data = b"POST /u HTTP/1.1\r\n" + H + b"Content-Length: 2048\r\nExpect: 100-continue\r\n\r\n"
    ex = await exchange(port, data)
    assert [r.status for r in ex.responses] == [413]
    assert up.connections == 0


async def test_chunked_body_over_max_body_bytes_is_413(guarded):
    up, sc, port = await guarded(limits={"max_body_bytes": 1024})
    chunk = b"258\r\n" + b"a" * 600 + b"\r\n"  # 600 bytes each
    data = b"POST /u HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunk
    ex = await exchange(port, [data, chunk, chunk + b"0\r\n\r\n"])
    assert_error(ex.responses[0], 413, "bad_request")
    assert ex.eof
    assert up.seen == [], "no complete request reached the upstream"


async def test_body_at_the_limit_passes(guarded):
    up, sc, port = await guarded(limits={"max_body_bytes": 1024})
    data = b"POST /u HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    data += b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n"
    ex = await exchange(port, data)
    assert [r.status for r in ex.responses] == [200]
    assert len(up.seen[0].body) == 1024


# --------------------------------------------------------------------- admin exposure


def _non_loopback_ipv4() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for addr in out.split():
        if "." in addr and not addr.startswith("127."):
            try:
                with socket.socket() as s:
                    s.bind((addr, 0))
                return addr
            except OSError:
                continue
    return None


def test_loopback_guard_function():
    assert _is_loopback("127.0.0.1") and _is_loopback("127.9.9.9") and _is_loopback("::1")
    for remote in ("192.0.2.2", "10.0.0.1", "::ffff:10.0.0.1", "", None, "localhost", "garbage"):
        assert not _is_loopback(remote), remote


@pytest.mark.parametrize("expose", [False, True])
async def test_admin_and_debug_refuse_non_loopback_clients(guarded, expose):
    addr = _non_loopback_ipv4()
    if addr is None:
        pytest.skip("no non-loopback address on this machine: covered by the guard-function test")
    admin_port = free_port()
    up, sc, port = await guarded(
        listeners={"admin": f"0.0.0.0:{admin_port}"}, admin={"expose_debug": expose}
    )
    async with aiohttp.ClientSession() as s:
        for path in ("/admin/config", "/admin/endpoints", "/debug/traces"):
            async with s.get(f"http://{addr}:{admin_port}{path}") as r:
                if expose:
                    assert r.status in (200, 404), path  # /debug/traces may not exist yet
                else:
                    assert r.status == 403, path
                    assert (await r.json())["error"] == "forbidden"
            async with s.get(f"http://127.0.0.1:{admin_port}{path}") as r:
                assert r.status != 403
        async with s.get(f"http://{addr}:{admin_port}/healthz") as r:
            assert r.status == 200  # orchestrators reach health from anywhere


# --------------------------------------------------------------------- secrets


async def test_consul_token_never_shown(guarded, caplog):
    token = "tok-5ecret-8c1f0e"
    caplog.set_level(logging.DEBUG)
    up, sc, port = await guarded(discovery={"consul": {"token": token}})
    # discovery.static is replaced by the override above: route to nothing known
    admin = f"http://{sc.config.listeners.admin}"
    seen_text = []
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/admin/config") as r:
            text = await r.text()
            assert r.status == 200
            assert json.loads(text)["discovery"]["consul"]["token"] == "<redacted>"
            seen_text.append(text)
        for path in ("/admin/endpoints", "/readyz", "/healthz"):
            async with s.get(f"{admin}{path}") as r:
                seen_text.append(await r.text())
    for data in (GET, b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n", b"BAD\r\n\r\n"):
        seen_text.append((await exchange(port, data, until=1)).raw.decode("latin-1"))
    seen_text += [rec.getMessage() for rec in caplog.records]
    assert all(token not in t for t in seen_text)
