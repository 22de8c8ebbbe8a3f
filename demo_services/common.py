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

from aiohttp import web

from demo_services.faults import Faults, FaultSpec, FaultSpecError, fault_middleware, fault_routes

FAULTS_KEY = web.AppKey("faults", Faults)


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


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then close listeners and finish in-flight requests."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


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
