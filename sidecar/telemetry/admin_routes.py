"""Telemetry's routes for the admin server: `/metrics` and `/debug/traces`.

The admin server (sidecar/admin/server.py) mounts these (method, path, handler) tuples and
enforces loopback-only access to /debug/* itself."""

from __future__ import annotations

import json

from sidecar.admin.server import AdminHandler, AdminRoute, json_body, query_params
from sidecar.config import parse_duration
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.span_buffer import SpanBuffer

Route = AdminRoute

DEFAULT_LOOKBACK = 3600.0  # Jaeger's UI default, 1h
DEFAULT_LIMIT = 20
MAX_LIMIT = 10000


def telemetry_routes(metrics: Metrics | None, buffer: SpanBuffer | None) -> list[Route]:
    routes: list[Route] = []
    if metrics is not None:
        routes.append(("GET", "/metrics", metrics_handler(metrics)))
    if buffer is not None:
        routes.append(("GET", "/debug/traces", traces_handler(buffer)))
    return routes


def metrics_handler(metrics: Metrics) -> AdminHandler:
    async def handle(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(200, Headers.from_lower([("content-type", content_type)]), BytesBody(body))

    return handle


def _bad_request(message: str) -> Response:
    return json_body(json.dumps({"data": None, "errors": [{"code": 400, "msg": message}]}), 400)


def traces_handler(buffer: SpanBuffer) -> AdminHandler:
    """Jaeger query-API shaped: `?service=&operation=&lookback=15m&limit=20`."""

    async def handle(request: Request) -> Response:
        q = query_params(request)
        try:
            lookback = parse_duration(q["lookback"]) if q.get("lookback") else DEFAULT_LOOKBACK
        except ValueError as exc:
            return _bad_request(f"lookback: {exc}")
        try:
            limit = int(q.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            return _bad_request("limit: expected an integer")
        if not 0 < limit <= MAX_LIMIT:
            return _bad_request(f"limit: must be between 1 and {MAX_LIMIT}")
        result = buffer.query(
            service=q.get("service") or None,
            operation=q.get("operation") or None,
            lookback=lookback,
            limit=limit,
        )
        return Response(
            200,
            Headers.from_lower([("content-type", "application/json")]),
            BytesBody(json.dumps(result, separators=(",", ":")).encode()),
        )

    return handle
