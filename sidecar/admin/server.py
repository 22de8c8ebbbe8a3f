"""Admin HTTP server: /healthz, /readyz, plus routes contributed by components (/metrics,
/admin/*, /debug/*), and an index of them at / and /admin/. /admin/* and /debug/* answer
loopback clients only unless `admin.expose_debug`.

It runs on the data path's own HTTP/1.1 server protocol (httptools), not aiohttp.web: the
admin API is a handful of GET routes, and aiohttp.web alone cost ~13 MiB of RSS per sidecar.
It has its own ServerState, so the data path's connection limit and drain don't apply here."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.stack import Handler
from sidecar.transport.server import ServerConnection, ServerLimits, ServerState

log = logging.getLogger(__name__)

AdminRoute = tuple[str, str, Handler]  # (method, path, handler)
ReadinessCheck = Callable[[], Awaitable[list[str]]]  # reasons not ready; empty = ready

_PROTECTED = ("/admin", "/debug")
# Admin requests are small GETs from operators and scrapers; these bound what a stray client
# can make the admin port hold.
ADMIN_LIMITS = ServerLimits(
    max_header_bytes=16384,
    max_body_bytes=1024 * 1024,
    header_read_timeout=10.0,
    max_connections=1024,
)
_STOP_GRACE = 2.0  # seconds an in-flight admin request may take to finish at stop

# One line per endpoint for the index page (/). A route added without a line here is listed
# as undescribed, and tests/unit/admin/test_index.py names it.
ROUTE_DESCRIPTIONS: Mapping[str, str] = {
    "/": "this index",
    "/admin/": "this index",
    "/healthz": "liveness: 200 while the process serves",
    "/readyz": "readiness: 200 when ready, else 503 with the reasons in the body",
    "/metrics": "Prometheus metrics (OpenMetrics when asked for with Accept)",
    "/admin/config": "the effective configuration, secrets redacted",
    "/admin/endpoints": "endpoints per upstream: ejected, in-flight requests, EWMA latency",
    "/admin/breakers": "circuit breaker state per upstream",
    "/debug/traces": "recent spans as the Jaeger query API returns them "
    "(?service=&operation=&lookback=15m&limit=20)",
}
UNDESCRIBED = "(no description)"


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def json_response(data: object, status: int = 200) -> Response:
    """Pretty JSON, the admin API's house style."""
    return json_body(json.dumps(data, indent=2, sort_keys=True, default=str), status)


def json_body(text: str, status: int = 200) -> Response:
    return Response(
        status=status,
        headers=Headers.from_lower([("content-type", "application/json; charset=utf-8")]),
        body=BytesBody(text.encode()),
    )


def text_response(text: str, status: int, extra: list[tuple[str, str]] | None = None) -> Response:
    fields = [("content-type", "text/plain; charset=utf-8"), *(extra or [])]
    return Response(status, Headers.from_lower(fields), BytesBody(text.encode()))


def query_params(request: Request) -> dict[str, str]:
    """The query string's parameters, first value of each (blank values kept)."""
    q = request.target.find("?")
    if q < 0:
        return {}
    parsed = parse_qs(request.target[q + 1 :], keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


class AdminServer:
    def __init__(
        self,
        routes: Sequence[AdminRoute],
        readiness: ReadinessCheck,
        expose_debug: bool = False,
    ) -> None:
        self._expose = expose_debug
        self._readiness = readiness
        # path -> method -> handler; GET routes answer HEAD too (as aiohttp's add_get did).
        self._routes: dict[str, dict[str, Handler]] = {}
        self._add("GET", "/healthz", self._healthz)
        self._add("GET", "/readyz", self._readyz)
        for method, path, handler in routes:
            self._add(method, path, handler)
        self._add("GET", "/", self._index)
        self._add("GET", "/admin/", self._index)
        self._state = ServerState(ADMIN_LIMITS)
        self._server: asyncio.Server | None = None

    def _add(self, method: str, path: str, handler: Handler) -> None:
        methods = self._routes.setdefault(path, {})
        methods[method.upper()] = handler
        if method.upper() == "GET":
            methods.setdefault("HEAD", handler)

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "admin server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def handle(self, request: Request) -> Response:
        target = request.target
        # Routed on the decoded path (as aiohttp did), so the guard sees what routing sees.
        path = unquote(request.path if target.startswith("/") else urlsplit(target).path)
        if (
            path.startswith(_PROTECTED)
            and not self._expose
            and not _is_loopback(request.client_addr)
        ):
            return json_response(
                {
                    "error": "forbidden",
                    "message": "admin and debug endpoints answer loopback "
                    "clients only (set admin.expose_debug: true to change this)",
                },
                status=403,
            )
        methods = self._routes.get(path)
        if methods is None:
            return text_response("404: Not Found", 404)
        handler = methods.get(request.method)
        if handler is None:
            allow = ",".join(sorted(methods))
            return text_response("405: Method Not Allowed", 405, [("allow", allow)])
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin handler failed: %s %s", request.method, path)
            return text_response("500 Internal Server Error", 500)

    def index_text(self) -> str:
        """Every route with its methods and one line on what it serves."""
        rows = [
            (",".join(m for m in methods if m != "HEAD") or "HEAD", path)
            for path, methods in self._routes.items()
        ]
        width = max(len(f"{m} {p}") for m, p in rows)
        lines = ["sidecar admin endpoints", ""]
        for methods, path in rows:
            described = ROUTE_DESCRIPTIONS.get(path, UNDESCRIBED)
            lines.append(f"{methods} {path}".ljust(width + 2) + described)
        guarded = "answer loopback clients only" if not self._expose else "answer every client"
        lines += ["", f"/admin/* and /debug/* {guarded} (admin.expose_debug)."]
        return "\n".join(lines) + "\n"

    async def _index(self, request: Request) -> Response:
        return text_response(self.index_text(), 200)

    async def _healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        reasons = await self._readiness()
        if reasons:
            return json_response({"status": "not ready", "reasons": reasons}, status=503)
        return json_response({"status": "ready"})

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._state = state = ServerState(ADMIN_LIMITS)
        handler = self.handle

        def factory() -> ServerConnection:
            # No `prepare`: the data path's (request ids, proxy headers) is not the admin's.
            return ServerConnection(handler, state, "admin")

        self._server = await loop.create_server(factory, host, port, reuse_address=True)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Idle keep-alive connections close now, busy ones after their answer.
        self._state.start_drain()
        await self._state.wait_idle(_STOP_GRACE)
        for conn in list(self._state.connections):
            conn.close_if_idle()
