"""The baseline every Python proxy is compared with: an aiohttp server on uvloop that forwards
each request to one upstream through one shared ClientSession. No features, no hygiene.

    python -m bench.minimal_proxy --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import ClientSession, TCPConnector, web

# Hop-by-hop and framing fields aiohttp recomputes itself.
_SKIP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


def build_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start_session(app: web.Application) -> None:
        app["session"] = ClientSession(
            connector=TCPConnector(limit=1024, keepalive_timeout=60), auto_decompress=False
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        session: ClientSession = request.app["session"]
        data = await request.read() if request.can_read_body else None
        async with session.request(
            request.method, upstream + request.path_qs, headers=request.headers, data=data
        ) as resp:
            body = await resp.read()
            headers = {k: v for k, v in resp.headers.items() if k.lower() not in _SKIP}
            return web.Response(status=resp.status, body=body, headers=headers)

    app.on_startup.append(start_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(build_app(upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(host, int(port), args.upstream.rstrip("/")))


if __name__ == "__main__":
    main()
