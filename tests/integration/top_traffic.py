"""A real sidecar under steady traffic for `sidecar top` to watch: shared by the CLI tests and
the screenshot test. Traffic is paced, not synchronised on: assertions poll or use rates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from sidecar.app import Sidecar


@dataclass(frozen=True)
class Busy:
    sidecar: Sidecar
    admin: str
    inbound: str
    outbound: str


async def drive(calls: list[tuple[str, dict[str, str]]], stop: asyncio.Event,
                pause: float = 0.01) -> None:
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
