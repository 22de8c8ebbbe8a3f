"""Telemetry's routes for the admin server: `/metrics` and `/debug/traces`.

The admin server (sidecar/admin/server.py) mounts these (method, path, handler) tuples and
enforces loopback-only access to /debug/* itself.

The admin server shares the event loop with the data path, so a trace dump must not hold it:
an answer is bounded (`MAX_LIMIT` traces, `MAX_DUMP_BYTES` of JSON), one dump is built at a
time, and it is built in slices of at most `SLICE` seconds with the loop handed back to the
data path between them. (A thread would not help: the work is pure Python under the GIL.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Generator

from sidecar.admin.server import AdminRoute, json_body, query_params
from sidecar.config import parse_duration
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.stack import Handler
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.span_buffer import SpanBuffer

Route = AdminRoute

DEFAULT_LOOKBACK = 3600.0  # Jaeger's UI default, 1h
DEFAULT_LIMIT = 20
# Larger limits are served as this many traces (about 1 MiB of JSON).
MAX_LIMIT = 1000
# Work done in one go before the loop gets a turn.
SLICE = 0.001


def telemetry_routes(metrics: Metrics | None, buffer: SpanBuffer | None) -> list[Route]:
    routes: list[Route] = []
    if metrics is not None:
        routes.append(("GET", "/metrics", metrics_handler(metrics)))
    if buffer is not None:
        routes.append(("GET", "/debug/traces", traces_handler(buffer)))
    return routes


def metrics_handler(metrics: Metrics) -> Handler:
    async def handle(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(200, Headers.from_lower([("content-type", content_type)]), BytesBody(body))

    return handle


def _bad_request(message: str) -> Response:
    return json_body(json.dumps({"data": None, "errors": [{"code": 400, "msg": message}]}), 400)


async def run_sliced(steps: Generator[None, None, bytes], budget: float = SLICE) -> bytes:
    """Drive a stepped computation in slices of `budget` seconds, each followed by as long a
    pause: the loop is never held longer than a slice, and the admin work never gets more
    than half of it however busy the data path is."""
    until = time.perf_counter() + budget
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: bytes = stop.value
            return result
        if time.perf_counter() >= until:
            await asyncio.sleep(budget)
            until = time.perf_counter() + budget


def traces_handler(buffer: SpanBuffer) -> Handler:
    """Jaeger query-API shaped: `?service=&operation=&lookback=15m&limit=20`."""
    one_at_a_time = asyncio.Lock()

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
        if limit <= 0:
            return _bad_request("limit: must be a positive integer")
        steps = buffer.query_json(
            service=q.get("service") or None,
            operation=q.get("operation") or None,
            lookback=lookback,
            limit=min(limit, MAX_LIMIT),
        )
        async with one_at_a_time:
            body = await run_sliced(steps)
        return Response(
            200, Headers.from_lower([("content-type", "application/json")]), BytesBody(body)
        )

    return handle
