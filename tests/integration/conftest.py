from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.config import build_config
from tests.conftest import free_port
from tests.doubles.upstream import Upstream


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[str], Any]]:
    started: list[Upstream] = []

    async def start(name: str) -> Upstream:
        up = await Upstream(name).start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


@pytest.fixture
async def sidecar_factory() -> AsyncIterator[Callable[..., Any]]:
    running: list[Sidecar] = []

    async def make(data: dict[str, Any]) -> Sidecar:
        data = {**data}
        data.setdefault("listeners", {})
        for key in ("inbound", "outbound", "admin"):
            data["listeners"].setdefault(key, f"127.0.0.1:{free_port()}")
        data.setdefault("tracing", {"exporter": "none"})
        sc = Sidecar(build_config(data, env={}))
        await sc.start()
        running.append(sc)
        return sc

    yield make
    for sc in running:
        await sc.drain(timeout=1)
        await sc.stop()
