"""A wire-level double of Jaeger's query API (the HTTP JSON API its UI uses, as served by
jaeger-query v1 and Jaeger v2 on :16686), serving the traces it is given.

Routes: /api/services, /api/services/{service}/operations, /api/operations?service=,
/api/traces?service=&operation=&start=&end=&lookback=&limit=, /api/traces/{traceID}.
Envelope {"data", "total", "limit", "offset", "errors"}; errors as
{"data": null, "errors": [{"code", "msg"}]} with the HTTP status, as Jaeger does."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

DEFAULT_LIMIT = 100  # jaeger-query's default when `limit` is absent
DEFAULT_LOOKBACK_US = 3600 * 1_000_000


def _envelope(
    data: Any, status: int = 200, errors: list[dict[str, Any]] | None = None
) -> web.Response:
    total = len(data) if isinstance(data, list) else 0
    body = {"data": data, "total": total, "limit": 0, "offset": 0, "errors": errors}
    return web.json_response(body, status=status)


def _error(status: int, msg: str) -> web.Response:
    return _envelope(None, status, [{"code": status, "msg": msg}])


class JaegerDouble:
    def __init__(self, traces: Sequence[Mapping[str, Any]]) -> None:
        self.traces = [dict(t) for t in traces]
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) as received
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/api/services", self._services)
        app.router.add_get("/api/services/{service}/operations", self._operations)
        app.router.add_get("/api/operations", self._operations_v2)
        app.router.add_get("/api/traces", self._search)
        app.router.add_get("/api/traces/{trace_id}", self._trace)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> JaegerDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.path, dict(request.query)))

    @staticmethod
    def _service_of(trace: Mapping[str, Any], span: Mapping[str, Any]) -> str:
        proc = trace.get("processes", {}).get(span.get("processID"), {})
        return str(proc.get("serviceName", ""))

    def _spans(self) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        return [(t, s) for t in self.traces for s in t.get("spans", [])]

    async def _services(self, request: web.Request) -> web.Response:
        self._record(request)
        names = sorted({self._service_of(t, s) for t, s in self._spans()})
        return _envelope(names)

    async def _operations(self, request: web.Request) -> web.Response:
        self._record(request)
        svc = request.match_info["service"]
        ops = sorted(
            {str(s["operationName"]) for t, s in self._spans() if self._service_of(t, s) == svc}
        )
        return _envelope(ops)

    async def _operations_v2(self, request: web.Request) -> web.Response:
        self._record(request)
        svc = request.query.get("service")
        if not svc:
            return _error(400, "parameter 'service' is required")
        kinds: dict[str, str] = {}
        for t, s in self._spans():
            if self._service_of(t, s) == svc:
                kind = next(
                    (
                        str(tag["value"])
                        for tag in s.get("tags", [])
                        if tag.get("key") == "span.kind"
                    ),
                    "",
                )
                kinds.setdefault(str(s["operationName"]), kind)
        return _envelope([{"name": n, "spanKind": k} for n, k in sorted(kinds.items())])

    async def _search(self, request: web.Request) -> web.Response:
        self._record(request)
        q = request.query
        service = q.get("service")
        if not service:
            return _error(400, "parameter 'service' is required")
        try:
            limit = int(q.get("limit") or DEFAULT_LIMIT)
            now_us = int(time.time() * 1_000_000)
            end = int(q["end"]) if q.get("end") else now_us
            start = int(q["start"]) if q.get("start") else end - DEFAULT_LOOKBACK_US
        except ValueError as exc:
            return _error(400, f"unable to parse param: {exc}")
        operation = q.get("operation")
        found = []
        for trace in self.traces:
            for span in trace.get("spans", []):
                if self._service_of(trace, span) != service:
                    continue
                if operation and span.get("operationName") != operation:
                    continue
                if start <= int(span["startTime"]) <= end:
                    found.append(trace)
                    break
        # newest first, like Jaeger's storage backends
        found.sort(key=lambda t: -min(int(s["startTime"]) for s in t["spans"]))
        return _envelope(found[:limit] if limit > 0 else found)

    async def _trace(self, request: web.Request) -> web.Response:
        self._record(request)
        tid = request.match_info["trace_id"].lower()
        for trace in self.traces:
            if str(trace.get("traceID", "")).lower() == tid:
                return _envelope([trace])
        return _error(404, "trace not found")
