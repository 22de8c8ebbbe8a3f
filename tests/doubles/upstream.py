"""An HTTP upstream double (aiohttp) that records what reached it."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str


@dataclass
class Upstream:
    name: str
    seen: list[Seen] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)
    port: int = 0
    delay: float = 0.0
    release: asyncio.Event | None = None  # when set, /slow waits for it
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        self.seen.append(
            Seen(
                request.method,
                request.path_qs,
                {k.lower(): v for k, v in request.headers.items()},
                [(k.lower(), v) for k, v in request.headers.items()],
                len(body),
                hashlib.sha256(body).hexdigest(),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)  # simulated service latency
        if request.path == "/slow" and self.release is not None:
            await self.release.wait()
        if request.path.startswith("/download/"):
            size = int(request.path.rsplit("/", 1)[1])
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = bytes(range(256)) * 256  # 64 KiB
            sent = 0
            while sent < size:
                part = block[: min(len(block), size - sent)]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            return resp
        if request.path == "/close":  # answer, then close the connection (no keep-alive)
            resp = web.json_response({"upstream": self.name})
            resp.force_close()
            return resp
        if request.path.startswith("/status/"):
            return web.json_response({"upstream": self.name}, status=int(request.path[8:]))
        return web.json_response(
            {
                "upstream": self.name,
                "path": request.path_qs,
                "len": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            },
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret",
                "Keep-Alive": "timeout=5",
            },
        )

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.release is not None:
            self.release.set()  # let parked /slow handlers finish so cleanup doesn't wait
        if self.runner is not None:
            await self.runner.cleanup()
