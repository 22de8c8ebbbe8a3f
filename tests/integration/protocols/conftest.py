from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.doubles.grpc_upstream import GrpcUpstream


@pytest.fixture
async def grpc_upstreams() -> AsyncIterator[Callable[..., Any]]:
    started: list[GrpcUpstream] = []

    async def start(name: str = "grpc", port: int = 0) -> GrpcUpstream:
        up = await GrpcUpstream(name).start(port)
        started.append(up)
        return up

    yield start
    for up in started:
        up.release.set()
        await up.stop()
