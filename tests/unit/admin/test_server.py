"""The admin server on our own transport: routing, guard, status codes, over real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.admin.server import AdminRoute, AdminServer, json_response, query_params
from sidecar.http import EMPTY_BODY, Headers, Request, Response

ROOT = Path(__file__).resolve().parents[3]


async def echo_query(request: Request) -> Response:
    return json_response(query_params(request))


async def broken(request: Request) -> Response:
    raise RuntimeError("boom")


ROUTES: list[AdminRoute] = [
    ("GET", "/admin/echo", echo_query),
    ("GET", "/debug/broken", broken),
]


@pytest.fixture
async def admin() -> AsyncIterator[AdminServer]:
    reasons: list[str] = ["local app not healthy: refused"]

    async def readiness() -> list[str]:
        return reasons

    server = AdminServer(ROUTES, readiness)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def _get(
    server: AdminServer, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{server.port}{path}") as r:
            return r.status, dict(r.headers), await r.read()


async def test_healthz_and_readyz(admin: AdminServer) -> None:
    status, headers, body = await _get(admin, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, _, body = await _get(admin, "/readyz")
    assert status == 503
    assert json.loads(body) == {
        "status": "not ready",
        "reasons": ["local app not healthy: refused"],
    }


async def test_head_answers_get_routes_without_a_body(admin: AdminServer) -> None:
    status, _, body = await _get(admin, "/healthz", "HEAD")
    assert status == 200 and body == b""


async def test_unknown_path_is_404_and_wrong_method_405(admin: AdminServer) -> None:
    status, _, body = await _get(admin, "/nope")
    assert status == 404 and body == b"404: Not Found"
    status, headers, _ = await _get(admin, "/healthz", "POST")
    assert status == 405 and headers["Allow"] == "GET,HEAD"


async def test_query_parameters_are_decoded(admin: AdminServer) -> None:
    status, _, body = await _get(admin, "/admin/echo?service=a%20b&op=GET+%2Fx&x=1&x=2&blank=")
    assert status == 200
    assert json.loads(body) == {"service": "a b", "op": "GET /x", "x": "1", "blank": ""}


async def test_a_failing_handler_is_a_500_not_a_dropped_connection(admin: AdminServer) -> None:
    status, _, _ = await _get(admin, "/debug/broken")
    assert status == 500
    status, _, _ = await _get(admin, "/healthz")
    assert status == 200


def _request(path: str, client: str) -> Request:
    return Request("GET", path, Headers([("host", "x")]), EMPTY_BODY, client_addr=client)


@pytest.mark.parametrize("path", ["/admin/echo", "/%61dmin/echo", "/debug/broken", "/admin/none"])
async def test_guard_refuses_non_loopback_clients(path: str) -> None:
    async def ready() -> list[str]:
        return []

    server = AdminServer(ROUTES, ready)
    resp = await server.handle(_request(path, "192.0.2.7"))
    assert resp.status == 403
    assert json.loads(b"".join([c async for c in resp.body]))["error"] == "forbidden"
    assert (await server.handle(_request("/healthz", "192.0.2.7"))).status == 200
    exposed = AdminServer(ROUTES, ready, expose_debug=True)
    assert (await exposed.handle(_request(path, "192.0.2.7"))).status != 403


async def test_stop_closes_idle_keep_alive_connections(admin: AdminServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await admin.stop()
        while await reader.read(65536):
            pass
    writer.close()


def test_importing_the_app_does_not_import_aiohttp() -> None:
    # aiohttp costs ~13 MiB of RSS per sidecar; only Consul discovery and the CLI's client
    # commands need it, so a plain sidecar must not load it (issue 9's memory target).
    code = (
        "import sys\n"
        "from sidecar.app import Sidecar\n"
        "from sidecar.config import Config\n"
        "Sidecar(Config.model_validate({'service': {'name': 'svc'},"
        " 'tracing': {'exporter': 'none'}}))\n"
        "print('aiohttp' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
