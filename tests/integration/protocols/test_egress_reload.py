"""Egress changes on reload (what SIGHUP applies): names added to or removed from
`egress.allow`, `allow_private` and `connect_ports`, and the section turned on or off, take
effect for the next request while a request in flight finishes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.config import Config, build_config
from tests.conftest import free_port
from tests.doubles.upstream import Upstream

ONE, TWO = "one.example.test", "two.example.test"


async def fake_dns(name: str) -> list[str]:
    if name in (ONE, TWO):
        return ["127.0.0.1"]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class Env:
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.listeners = {k: f"127.0.0.1:{free_port()}" for k in ("inbound", "outbound", "admin")}
        self.sc: Sidecar | None = None
        self.policies: dict[str, Any] = {}  # upstreams.<name> sections besides default

    def config(self, egress: dict[str, Any] | None) -> Config:
        data: dict[str, Any] = {
            "service": {"name": "app"},
            "listeners": self.listeners,
            "tracing": {"exporter": "none"},
            "upstreams": {"default": {"retries": {"attempts": 0}}, **self.policies},
        }
        if egress is not None:
            data["egress"] = {"allow_private": ["127.0.0.1/32"], **egress}
        return build_config(data, env={})

    async def start(self, egress: dict[str, Any] | None) -> Sidecar:
        self.sc = Sidecar(self.config(egress), host_lookup=fake_dns)
        await self.sc.start()
        return self.sc

    def reload(self, egress: dict[str, Any] | None) -> None:
        assert self.sc is not None
        self.sc.reload(self.config(egress))

    @property
    def proxy_port(self) -> int:
        assert self.sc is not None
        return self.sc.bound_port("listeners.outbound")

    async def get(self, name: str, path: str = "/hello") -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.proxy_port}{path}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Host": f"{name}:{self.up.port}"}) as resp,
        ):
            return resp.status, json.loads(await resp.read())

    async def connect(self, name: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy_port)
        target = f"{name}:{self.up.port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        return int(head.split(b" ")[1])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    up = await Upstream("external", release=asyncio.Event()).start()
    env = Env(up)
    yield env
    if env.sc is not None:
        await env.sc.drain(timeout=1)
        await env.sc.stop()
    await up.stop()


async def test_allow_list_changes_apply_to_new_requests_not_ones_in_flight(env: Env) -> None:
    await env.start({"allow": [ONE], "connect_ports": [env.up.port]})
    assert (await env.get(ONE))[0] == 200
    assert (await env.get(TWO))[0] == 404
    in_flight = asyncio.ensure_future(env.get(ONE, "/slow"))
    deadline = asyncio.get_running_loop().time() + 5
    while not any(s.path_qs == "/slow" for s in env.up.seen):
        assert asyncio.get_running_loop().time() < deadline and not in_flight.done()
        await asyncio.sleep(0.01)

    env.reload({"allow": [TWO], "connect_ports": [env.up.port]})
    status, body = await env.get(ONE)
    assert status == 404 and body["error"] == "no_route"
    assert await env.connect(ONE) == 403
    status, body = await env.get(TWO)
    assert status == 200 and body["upstream"] == "external"
    assert await env.connect(TWO) == 200

    assert env.up.release is not None
    env.up.release.set()
    status, body = await asyncio.wait_for(in_flight, 5)
    assert status == 200 and body["path"] == "/slow"  # the request in flight finished

    env.reload({"allow": [ONE, TWO], "connect_ports": [env.up.port]})
    assert (await env.get(ONE))[0] == 200  # allowed again: routable again


async def test_allow_private_and_connect_ports_apply_on_reload(env: Env) -> None:
    await env.start({"allow": [ONE], "allow_private": [], "connect_ports": [env.up.port]})
    status, body = await env.get(ONE)
    assert status == 502 and "(loopback)" in body["message"]
    env.reload({"allow": [ONE], "allow_private": ["127.0.0.1/32"], "connect_ports": [443]})
    assert (await env.get(ONE))[0] == 200
    assert await env.connect(ONE) == 403  # port no longer in connect_ports
    env.reload({"allow": [ONE], "connect_ports": [env.up.port]})
    assert await env.connect(ONE) == 200


async def test_the_egress_section_turns_on_and_off_on_reload(env: Env) -> None:
    await env.start(None)
    assert await env.connect(ONE) == 405
    assert (await env.get(ONE))[0] == 404
    env.reload({"allow": [ONE], "connect_ports": [env.up.port]})
    assert (await env.get(ONE))[0] == 200
    assert await env.connect(ONE) == 200
    env.reload(None)
    assert await env.connect(ONE) == 405
    assert (await env.get(ONE))[0] == 404


async def test_a_removed_name_with_its_own_policy_is_not_dialled_any_more(env: Env) -> None:
    # Its `upstreams.<name>` section keeps it a configured name: with no source listing it,
    # it has no endpoint (as at start), never a connect that skips the egress checks.
    env.policies = {ONE: {"timeouts": {"total": "2s"}}}
    await env.start({"allow": [ONE]})
    assert (await env.get(ONE))[0] == 200
    served = len(env.up.seen)
    env.reload({"allow": [TWO]})
    status, body = await env.get(ONE)
    assert status == 503 and body["error"] == "no_healthy_endpoints"
    assert len(env.up.seen) == served
