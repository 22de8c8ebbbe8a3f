"""Admin HTTP server (aiohttp): /healthz, /readyz, plus routes contributed by components
(/metrics, /admin/*, /debug/*). /admin/* and /debug/* answer loopback clients only unless
`admin.expose_debug` (DESIGN §8)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AdminRoute = tuple[str, str, AdminHandler]  # (method, path, handler)
ReadinessCheck = Callable[[], Awaitable[list[str]]]  # reasons not ready; empty = ready

_PROTECTED = ("/admin", "/debug")


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, sort_keys=True, default=str),
        status=status,
        content_type="application/json",
    )


class AdminServer:
    def __init__(
        self,
        routes: Sequence[AdminRoute],
        readiness: ReadinessCheck,
        expose_debug: bool = False,
    ) -> None:
        self._expose = expose_debug
        self._readiness = readiness
        self._app = web.Application(middlewares=[self._guard])
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        for method, path, handler in routes:
            self._app.router.add_route(method, path, handler)
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if (
            request.path.startswith(_PROTECTED)
            and not self._expose
            and not _is_loopback(request.remote)
        ):
            return json_response(
                {
                    "error": "forbidden",
                    "message": "admin and debug endpoints answer loopback "
                    "clients only (set admin.expose_debug: true to change this)",
                },
                status=403,
            )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = await self._readiness()
        if reasons:
            return json_response({"status": "not ready", "reasons": reasons}, status=503)
        return json_response({"status": "ready"})

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
