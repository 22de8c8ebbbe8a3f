"""The core data path over real loopback sockets with real HTTP clients."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import urllib.request
from typing import Any

import aiohttp

from sidecar.app import Sidecar
from sidecar.transport.client import UpstreamConnection
from sidecar.transport.server import ServerConnection
from tests.integration.hardening.conftest import eventually


def outbound(sc: Sidecar) -> str:
    return f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"


async def two_upstreams(start: Any, sidecar_factory: Any, **extra: Any) -> tuple[Any, Any, Sidecar]:
    a = await start("user-a")
    b = await start("user-b")
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": a.port},
            "discovery": {
                "static": {"user-service": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]}
            },
            **extra,
        }
    )
    return a, b, sc


async def test_host_header_routing_round_robins_and_reuses_connections(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(
        upstreams, sidecar_factory, **{"upstreams": {"default": {"load_balancer": "round_robin"}}}
    )
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            async with s.get(f"{outbound(sc)}/users/{i}", headers={"Host": "user-service"}) as r:
                assert r.status == 200
                assert (await r.json())["path"] == f"/users/{i}"
    assert len(a.seen) == 5 and len(b.seen) == 5
    # keep-alive pool: 10 requests over at most one connection per endpoint
    assert len(a.peers) == 1 and len(b.peers) == 1
    assert a.seen[0].headers["host"] == "user-service"


async def test_absolute_uri_routing_with_real_proxy_clients(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    async with aiohttp.ClientSession() as s:
        async with s.get("http://user-service/users/1?x=y", proxy=outbound(sc)) as r:
            assert r.status == 200
            assert (await r.json())["path"] == "/users/1?x=y"

    def via_urllib() -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": outbound(sc)}))
        with opener.open("http://user-service/users/2", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    assert (await asyncio.to_thread(via_urllib))["path"] == "/users/2"
    seen = a.seen + b.seen
    assert {s.path_qs for s in seen} == {"/users/1?x=y", "/users/2"}
    assert all(s.headers["host"] == "user-service" for s in seen)


async def test_curl_through_http_proxy(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-x",
        outbound(sc),
        "http://user-service/users/1",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out)["path"] == "/users/1"


async def test_large_upload_arrives_byte_identical(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    payload = os.urandom(3 * 1024 * 1024)

    async def chunks():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{outbound(sc)}/upload", data=payload, headers={"Host": "user-service"}
        ) as r:
            body = await r.json()
        assert body["len"] == len(payload)
        assert body["sha256"] == hashlib.sha256(payload).hexdigest()
        # chunked request body (no Content-Length) streams through too
        async with s.post(
            f"{outbound(sc)}/upload", data=chunks(), headers={"Host": "user-service"}
        ) as r:
            body = await r.json()
        assert body["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_large_chunked_download_streams_through(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    size = 5 * 1024 * 1024 + 123
    block = bytes(range(256)) * 256
    expected = (block * (size // len(block) + 1))[:size]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{outbound(sc)}/download/{size}", headers={"Host": "user-service"}) as r:
            assert r.status == 200
            data = await r.read()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_hop_by_hop_headers_stripped_and_forwarding_headers_set(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{outbound(sc)}/h",
            headers={
                "Host": "user-service",
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "hop",
                "Proxy-Authorization": "Basic abc",
                "TE": "trailers",
                "X-Request-Id": "req-123",
                "X-Keep": "yes",
            },
        ) as r,
    ):
        assert r.status == 200
        # response side: the upstream's Connection-named header is stripped too
        assert "X-Hop" not in r.headers
    seen = (a.seen + b.seen)[0].headers
    for hop in ("x-secret", "proxy-authorization", "te", "keep-alive"):
        assert hop not in seen, hop
    assert seen["x-keep"] == "yes"
    assert seen["x-request-id"] == "req-123"
    assert seen["via"].endswith("1.1 sidecar")
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "user-service"


async def test_request_id_generated_when_missing(upstreams, sidecar_factory):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{outbound(sc)}/x", headers={"Host": "user-service"}) as r:
            assert r.status == 200
    rid = (a.seen + b.seen)[0].headers["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0


async def expect_error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status
    assert resp.headers["x-sidecar-error"] == code
    body = await resp.json()
    assert body["error"] == code
    assert set(body) == {"error", "message", "upstream", "trace_id", "request_id"}
    return body  # type: ignore[no-any-return]


async def test_dead_upstream_gives_502_connect_failure(upstreams, sidecar_factory, unused_port):
    sc = await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"static": {"dead": [f"127.0.0.1:{unused_port}"]}},
        }
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{outbound(sc)}/x", headers={"Host": "dead"}) as r:
            body = await expect_error(r, 502, "upstream_connect_failure")
            assert body["upstream"] == "dead"


async def test_unknown_names_literal_ips_localhost_and_connect_are_refused(
    upstreams, sidecar_factory
):
    a, b, sc = await two_upstreams(upstreams, sidecar_factory)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{outbound(sc)}/x", headers={"Host": "nope"}) as r:
            await expect_error(r, 404, "no_route")
        for target in (
            f"http://127.0.0.1:{a.port}/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://localhost/x",
        ):
            async with s.get(target, proxy=outbound(sc)) as r:
                await expect_error(r, 404, "no_route")
        async with s.get(f"{outbound(sc)}/x", headers={"Host": f"127.0.0.1:{a.port}"}) as r:
            await expect_error(r, 404, "no_route")
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.bound_port("listeners.outbound"))
    writer.write(
        f"CONNECT 127.0.0.1:{a.port} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n\r\n".encode()
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 405")
    writer.close()
    assert a.seen == [] and b.seen == []


async def test_inbound_forwards_to_local_app(upstreams, sidecar_factory):
    app = await upstreams("app")
    sc = await sidecar_factory({"service": {"name": "bff", "port": app.port}})
    port = sc.bound_port("listeners.inbound")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{port}/context/7", data=b"hello") as r:
            assert r.status == 200
            body = await r.json()
    assert body == {
        "upstream": "app",
        "path": "/context/7",
        "len": 5,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
    }


async def test_fixed_listen_port_routes_to_its_upstream(upstreams, sidecar_factory, unused_port):
    a = await upstreams("user-a")
    await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{a.port}"]}},
            "upstreams": {"user-service": {"listen": f"127.0.0.1:{unused_port}"}},
        }
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{unused_port}/users/3") as r:
            assert r.status == 200
    assert a.seen[0].headers["host"] == "user-service"


async def test_admin_health_and_readiness(upstreams, sidecar_factory, unused_port):
    app = await upstreams("app")
    sc = await sidecar_factory({"service": {"name": "bff", "port": app.port}})
    admin = f"http://{sc.config.listeners.admin}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{admin}/readyz") as r:
            assert r.status == 200
    await app.stop()
    async with aiohttp.ClientSession() as s, s.get(f"{admin}/readyz") as r:
        assert r.status == 503
        assert "local app" in json.dumps(await r.json())


async def test_closed_connections_are_freed_without_the_cycle_collector(upstreams, sidecar_factory):
    # The data path runs the cyclic collector rarely (cli.py raises its threshold), so a
    # closed connection must not sit in a reference cycle: with clients and upstreams that
    # close after every exchange, memory would grow between collections.
    up = await upstreams("user-a")
    sc = await sidecar_factory(
        {
            "service": {"name": "bff", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
        }
    )
    port = sc.bound_port("listeners.outbound")

    def connections() -> int:
        kinds = (ServerConnection, UpstreamConnection)
        return sum(isinstance(o, kinds) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /close HTTP/1.1\r\nHost: user-service\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            writer.close()
            await writer.wait_closed()
        await eventually(lambda: connections() == 0)
    finally:
        gc.enable()
    assert len(up.seen) == 20
