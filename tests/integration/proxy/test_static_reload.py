"""`discovery.static` changes on reload: a name removed from the table stops being sent to its
old endpoints, also when its own `upstreams.<name>` section keeps it a configured name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.config import Config, build_config
from tests.conftest import free_port
from tests.doubles.upstream import Upstream


class Env:
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.listeners = {k: f"127.0.0.1:{free_port()}" for k in ("inbound", "outbound", "admin")}
        self.sc: Sidecar | None = None

    def config(self, static: dict[str, list[str]], policies: dict[str, Any]) -> Config:
        data: dict[str, Any] = {
            "service": {"name": "app"},
            "listeners": self.listeners,
            "tracing": {"exporter": "none"},
            "discovery": {"static": static},
            "upstreams": {"default": {"retries": {"attempts": 0}}, **policies},
        }
        return build_config(data, env={})

    async def get(self, name: str) -> tuple[int, Any]:
        assert self.sc is not None
        url = f"http://127.0.0.1:{self.sc.bound_port('listeners.outbound')}/hello"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Host": name}) as resp,
        ):
            return resp.status, json.loads(await resp.read())


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    up = await Upstream("users").start()
    env = Env(up)
    yield env
    if env.sc is not None:
        await env.sc.drain(timeout=1)
        await env.sc.stop()
    await up.stop()


@pytest.mark.parametrize(
    ("policies", "status", "error"),
    [
        ({"users": {"timeouts": {"total": "2s"}}}, 503, "no_healthy_endpoints"),
        ({}, 404, "no_route"),
    ],
    ids=["with-its-own-policy", "without"],
)
async def test_a_name_removed_from_static_is_not_sent_to_its_old_endpoints(
    env: Env, policies: dict[str, Any], status: int, error: str
) -> None:
    static = {"users": [f"127.0.0.1:{env.up.port}"]}
    env.sc = Sidecar(env.config(static, policies))
    await env.sc.start()
    assert (await env.get("users"))[0] == 200
    served = len(env.up.seen)
    env.sc.reload(env.config({}, policies))
    got, body = await env.get("users")
    assert (got, body["error"]) == (status, error)
    assert len(env.up.seen) == served
    # And back: the name listed again is served again.
    env.sc.reload(env.config(static, policies))
    assert (await env.get("users"))[0] == 200
