"""The admin index at / and /admin/: every endpoint the admin port serves, each with one line
saying what it is, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidecar.admin.server import UNDESCRIBED, AdminServer, json_response
from sidecar.app import Sidecar
from sidecar.config import build_config
from sidecar.http import Request, Response


async def extra(request: Request) -> Response:
    return json_response({})


@pytest.fixture
async def admin() -> AsyncIterator[AdminServer]:
    async def readiness() -> list[str]:
        return []

    server = AdminServer([("GET", "/admin/extra", extra)], readiness)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize("path", ["/", "/admin/"])
async def test_index_lists_every_route_with_a_line_each(admin: AdminServer, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{admin.port}{path}") as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/plain")
            text = await r.text()
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("GET ")}
    assert set(rows) == {"/", "/admin/", "/healthz", "/readyz", "/admin/extra"}
    assert "readiness: 200 when ready, else 503 with the reasons" in rows["/readyz"]
    assert rows["/admin/extra"].endswith(UNDESCRIBED)  # a route nobody described shows it
    assert "/admin/* and /debug/* answer loopback clients only" in text


def test_every_route_of_the_sidecar_is_described() -> None:
    """A route added to the sidecar without a line in ROUTE_DESCRIPTIONS fails here, by name."""
    config = build_config(
        {"service": {"name": "bff"}, "tracing": {"exporter": "none"}, "metrics": {"enabled": True}},
        env={},
    )
    text = Sidecar(config).admin.index_text()
    rows = [line for line in text.splitlines() if line.split(" ", 1)[0].isupper()]
    paths = {row.split()[1] for row in rows}
    assert {
        "/metrics",
        "/admin/config",
        "/admin/endpoints",
        "/admin/breakers",
        "/debug/traces",
    } <= paths
    assert [row.split()[1] for row in rows if row.endswith(UNDESCRIBED)] == []
