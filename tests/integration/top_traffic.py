"""A real sidecar under steady traffic for `sidecar top` to watch: shared by the CLI tests and
the screenshot test. Traffic is paced, not synchronised on: assertions poll or use rates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from demo_services import common, retrieval_service
from demo_services.faults import Faults, FaultSpec
from demo_services.grpc_client import Channel
from demo_services.retrieval_service import RETRIEVE
from sidecar.app import Sidecar


@dataclass(frozen=True)
class Busy:
    sidecar: Sidecar
    admin: str
    inbound: str
    outbound: str


async def drive(
    calls: list[tuple[str, dict[str, str]]], stop: asyncio.Event, pause: float = 0.01
) -> None:
    """Each call in turn, again and again, until `stop`; failures are part of the show."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            for url, headers in calls:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)  # pacing


@contextlib.asynccontextmanager
async def grpc_upstream(error_rate: float = 0.0) -> AsyncIterator[int]:
    """The demo's retrieval-service (gRPC over h2c) on a free port; yields the port."""
    app = retrieval_service.create_app(Faults(FaultSpec(error_rate=error_rate)))
    serving = await common.start(app, "127.0.0.1", 0)
    try:
        yield serving.port
    finally:
        await serving.close()


async def drive_grpc(url: str, authority: str, stop: asyncio.Event, pause: float = 0.01) -> None:
    """Unary gRPC calls to `url` (a sidecar listener) with `authority`, until `stop`."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    channel = Channel(host, int(port), authority)
    try:
        while not stop.is_set():
            await channel.unary(RETRIEVE, {"query": "q", "user": "7", "k": 1}, {}, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)  # pacing
    finally:
        channel.close()


@contextlib.asynccontextmanager
async def busy(
    sidecar_factory: Callable[..., Any],
    config: dict[str, Any],
    calls: Callable[[Busy], list[tuple[str, dict[str, str]]]],
    workers: int = 1,
) -> AsyncIterator[Busy]:
    sc: Sidecar = await sidecar_factory(config)
    b = Busy(
        sc,
        f"http://{sc.config.listeners.admin}",
        f"http://127.0.0.1:{sc.bound_port('listeners.inbound')}",
        f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}",
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(drive(calls(b), stop)) for _ in range(workers)]
    try:
        yield b
    finally:
        stop.set()
        await asyncio.gather(*tasks)
