"""What every demo service shares: app assembly with fault knobs, and the command line
`python -m demo_services.<name> --port N [--host H] [--seed S]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from demo_services.faults import Faults, FaultSpec, FaultSpecError, fault_middleware, fault_routes
from demo_services.grpc_wire import DetectingProtocol, GrpcServerProtocol, Handler, Interceptor

FAULTS_KEY = web.AppKey("faults", Faults)


@dataclass(frozen=True)
class GrpcMethods:
    """gRPC methods a service also serves on its port (HTTP/2 cleartext, prior knowledge)."""

    methods: Mapping[str, Handler]
    intercept: Interceptor | None = None
    http: Callable[[str, str], tuple[int, object]] | None = None


GRPC_KEY = web.AppKey("grpc", GrpcMethods)


def build_app(routes: Sequence[web.RouteDef], faults: Faults) -> web.Application:
    app = web.Application(middlewares=[fault_middleware(faults)])
    app[FAULTS_KEY] = faults
    app.add_routes(fault_routes(faults))
    app.add_routes(routes)
    return app


def parse_args(name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m demo_services.{name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, help="seed the fault randomness (reproducible runs)")
    return parser.parse_args(argv)


def faults_from_env(env: Mapping[str, str], seed: int | None) -> Faults:
    return Faults(FaultSpec.from_env(env), rng=random.Random(seed))


class Serving:
    """A started service: its port, and how to stop it (listeners first, then the app)."""

    def __init__(
        self,
        runner: web.AppRunner,
        port: int,
        server: asyncio.Server | None,
        h2_conns: set[GrpcServerProtocol],
    ) -> None:
        self.runner = runner
        self.port = port
        self._server = server
        self._h2_conns = h2_conns

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._h2_conns):
                conn.close()
        await self.runner.cleanup()


async def start(app: web.Application, host: str, port: int) -> Serving:
    """Listen on host:port (0: any free port). An app with gRPC methods (GRPC_KEY) serves them
    on the same port: HTTP/1.1 and h2c are told apart by the first bytes."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    grpc = app.get(GRPC_KEY)
    if grpc is None:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        return Serving(runner, port or int(runner.addresses[0][1]), None, set())
    http1 = runner.server
    assert http1 is not None
    h2_conns: set[GrpcServerProtocol] = set()

    def h2c() -> GrpcServerProtocol:
        conn = GrpcServerProtocol(grpc.methods, grpc.intercept, grpc.http, h2_conns.discard)
        h2_conns.add(conn)
        return conn

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: DetectingProtocol(http1, h2c), host, port, reuse_address=True
    )
    return Serving(runner, int(server.sockets[0].getsockname()[1]), server, h2_conns)


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then close listeners and finish in-flight requests."""
    serving = await start(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await serving.close()


AppFactory = Callable[[Faults, Mapping[str, str]], web.Application]


def main(name: str, factory: AppFactory, argv: Sequence[str] | None = None) -> int:
    args = parse_args(name, argv)
    try:
        faults = faults_from_env(os.environ, args.seed)
        app = factory(faults, os.environ)
    except (FaultSpecError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(app, args.host, args.port))
    except OSError as exc:
        print(f"{name}: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
