"""bff: the backend-for-frontend of an AI agent. `GET /context/{user_id}?q=...` assembles the
agent's context from user-service (profile), document-service (the user's documents) and
retrieval-service (passages for the query, the model-serving stand-in). retrieval-service is
called over gRPC (unary `/demo.retrieval.v1.Retrieval/Retrieve`, HTTP/2 cleartext, one
multiplexed connection); `BFF_RETRIEVAL_PROTOCOL=http` calls its HTTP/1.1 `POST /retrieve`
instead. A gRPC failure degrades the answer like an HTTP one.

Calls go through the local sidecar's outbound listener (`SIDECAR_OUTBOUND`, default
http://127.0.0.1:15001) with `Host: <upstream name>`; `UPSTREAM_<NAME>` (e.g.
`UPSTREAM_USER_SERVICE=http://127.0.0.1:8001`) sends one upstream straight to a URL instead.

The bff forwards the incoming trace headers on every outbound call. A sidecar cannot do that
for the app — it cannot know which outgoing request belongs to which incoming one — so without
this every hop would start a new trace. Every app behind a sidecar must do the same.

Modes: `sequential` (one call after another: the slow pattern the diagnosis finds) and
`concurrent` (asyncio.gather: the fix). Set with BFF_MODE or at runtime: POST /mode."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from demo_services import common
from demo_services.faults import Faults
from demo_services.grpc_client import Channel
from demo_services.grpc_wire import code_name
from demo_services.retrieval_service import RETRIEVE

NAME = "bff"
MODES = ("sequential", "concurrent")
UPSTREAMS = ("user-service", "document-service", "retrieval-service")
DEFAULT_OUTBOUND = "http://127.0.0.1:15001"

# W3C trace context + baggage, B3 (single and multi), Jaeger, and the request id: everything a
# sidecar or tracer may use to tie this request's outgoing calls to the incoming one.
PROPAGATED_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "x-request-id",
)
DEADLINE_HEADER = "x-sidecar-expected-timeout-ms"
PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True)
class Target:
    """Where calls to one upstream go: a base URL, and the Host header that routes them
    (None when the URL points straight at the service)."""

    base_url: str
    host: str | None


def targets_from_env(env: Mapping[str, str]) -> dict[str, Target]:
    outbound = env.get("SIDECAR_OUTBOUND", DEFAULT_OUTBOUND).rstrip("/")
    out = {}
    for name in UPSTREAMS:
        direct = env.get("UPSTREAM_" + name.upper().replace("-", "_"), "").rstrip("/")
        out[name] = Target(direct, None) if direct else Target(outbound, name)
    return out


def propagation_headers(incoming: Mapping[str, str], started: float, now: float) -> dict[str, str]:
    """Headers to put on every outgoing call made while serving `incoming`."""
    out = {k: incoming[k] for k in PROPAGATED_HEADERS if k in incoming}
    budget = incoming.get(DEADLINE_HEADER)
    if budget is not None:
        # Pass the caller's deadline on, minus what this request has spent already.
        try:
            remaining = float(budget) - (now - started) * 1000.0
        except ValueError:
            return out
        out[DEADLINE_HEADER] = str(max(0, int(remaining)))
    return out


@dataclass
class Call:
    upstream: str
    status: int
    data: Any
    duration_ms: float
    error: str | None = None
    grpc_status: int | None = None  # gRPC calls: the call's status code

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class ModeError(ValueError):
    pass


class Bff:
    def __init__(
        self,
        targets: Mapping[str, Target],
        mode: str = "sequential",
        timeout_s: float = 10.0,
        retrieval_protocol: str = "grpc",
    ) -> None:
        self.targets = dict(targets)
        self.mode = self._check_mode(mode)
        if retrieval_protocol not in PROTOCOLS:
            raise ValueError(
                f"BFF_RETRIEVAL_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
                f"not {retrieval_protocol!r}"
            )
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._retrieval: Channel | None = None
        if retrieval_protocol == "grpc":
            target = self.targets["retrieval-service"]
            url = urlsplit(target.base_url)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            self._retrieval = Channel(host, port, target.host or f"{host}:{port}")

    @staticmethod
    def _check_mode(mode: str) -> str:
        if mode not in MODES:
            raise ModeError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        return mode

    # One session (one connection pool) per process, opened with the app and closed with it.
    async def session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
            auto_decompress=False,
        )
        yield
        await self._session.close()
        self._session = None
        if self._retrieval is not None:
            self._retrieval.close()

    async def _call(
        self, upstream: str, method: str, path: str, headers: dict[str, str], **kw: Any
    ) -> Call:
        assert self._session is not None, "session opens with the app"
        target = self.targets[upstream]
        if target.host is not None:
            headers = {**headers, "host": target.host}
        start = time.perf_counter()
        try:
            async with self._session.request(
                method, target.base_url + path, headers=headers, **kw
            ) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            elapsed = (time.perf_counter() - start) * 1000
            return Call(upstream, 0, None, elapsed, error=type(exc).__name__)
        elapsed = (time.perf_counter() - start) * 1000
        error = None if 200 <= status < 300 else f"status {status}"
        return Call(upstream, status, data, elapsed, error)

    async def _grpc_call(
        self, channel: Channel, message: dict[str, Any], headers: dict[str, str]
    ) -> Call:
        budget_ms = headers.get(DEADLINE_HEADER)
        timeout_s = self._timeout_s
        if budget_ms is not None:
            timeout_s = min(timeout_s, int(budget_ms) / 1000.0)
        start = time.perf_counter()
        reply = await channel.unary(RETRIEVE, message, headers, timeout_s)
        elapsed = (time.perf_counter() - start) * 1000
        error = None if reply.ok else f"grpc-status {reply.code} {code_name(reply.code)}"
        return Call("retrieval-service", 200, reply.data, elapsed, error, grpc_status=reply.code)

    def _calls(self, user_id: str, query: str, headers: dict[str, str]) -> list[Awaitable[Call]]:
        message = {"query": query, "user": user_id, "k": 3}
        if self._retrieval is not None:
            retrieval = self._grpc_call(self._retrieval, message, headers)
        else:
            retrieval = self._call("retrieval-service", "POST", "/retrieve", headers, json=message)
        return [
            self._call("user-service", "GET", f"/users/{user_id}", headers),
            self._call("document-service", "GET", f"/documents?user={user_id}&limit=3", headers),
            retrieval,
        ]

    async def context(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        user_id = request.match_info["user_id"]
        query = request.query.get("q", "summarise my recent work")
        incoming = {k.lower(): v for k, v in request.headers.items()}
        headers = propagation_headers(incoming, started, time.perf_counter())
        calls = self._calls(user_id, query, headers)
        if self.mode == "concurrent":
            results = list(await asyncio.gather(*calls))
        else:
            results = [await c for c in calls]
        total_ms = (time.perf_counter() - started) * 1000
        timing = ", ".join(f"{c.upstream};dur={c.duration_ms:.1f}" for c in results)
        resp_headers = {"server-timing": f"{timing}, total;dur={total_ms:.1f}"}
        user, docs, passages = results
        if not user.ok:
            return web.json_response(
                {
                    "error": "upstream_failed",
                    "upstream": user.upstream,
                    "status": user.status,
                    "message": f"user-service failed: {user.error}",
                },
                status=502,
                headers=resp_headers,
            )
        body = {
            "user": user.data,
            "documents": docs.data.get("documents", []) if docs.ok else [],
            "passages": passages.data.get("passages", []) if passages.ok else [],
            "mode": self.mode,
            # Optional context is dropped, not fatal: the agent can still answer without it.
            "degraded": [c.upstream for c in (docs, passages) if not c.ok],
        }
        return web.json_response(body, headers=resp_headers)

    async def get_mode(self, request: web.Request) -> web.Response:
        return web.json_response({"mode": self.mode})

    async def post_mode(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.mode = self._check_mode(body["mode"])
        except (ValueError, KeyError, TypeError) as exc:
            message = str(exc) if isinstance(exc, ModeError) else 'expected {"mode": "..."}'
            return web.json_response({"error": "bad_request", "message": message}, status=400)
        return web.json_response({"mode": self.mode})


BFF_KEY = web.AppKey("bff", Bff)


def create_app(faults: Faults, env: Mapping[str, str] | None = None) -> web.Application:
    env = env or {}
    bff = Bff(
        targets_from_env(env),
        mode=env.get("BFF_MODE", "sequential"),
        timeout_s=float(env.get("BFF_UPSTREAM_TIMEOUT_S", "10")),
        retrieval_protocol=env.get("BFF_RETRIEVAL_PROTOCOL", "grpc"),
    )
    routes = [
        web.get("/context/{user_id}", bff.context),
        web.get("/mode", bff.get_mode),
        web.post("/mode", bff.post_mode),
    ]
    app = common.build_app(routes, faults)
    app.cleanup_ctx.append(bff.session_ctx)
    app[BFF_KEY] = bff
    return app


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(NAME, create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
