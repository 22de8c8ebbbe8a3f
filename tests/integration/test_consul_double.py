"""The Consul double against py-consul's own client: its wire format must be what a real
client sends and expects (keys, parameters, headers, status codes)."""

from __future__ import annotations

import asyncio
import time

import consul
import consul.aio
import pytest

from tests.doubles.consul import ConsulDouble, Instance


async def test_health_service_shape_and_passing_filter() -> None:
    async with ConsulDouble() as double:
        await double.set_instances(
            "user",
            [
                Instance("user", "user-1", 8001, address="10.0.0.1", tags=["v1"], meta={"az": "a"}),
                Instance("user", "user-2", 8002),
            ],
        )
        await double.set_status("user-2", "critical")
        c = consul.aio.Consul(host=double.host, port=double.port)
        try:
            index, nodes = await c.health.service("user", passing=True)
            _, everything = await c.health.service("user")
        finally:
            await c.http.close()
        assert int(index) == double.index
        assert [n["Service"]["ID"] for n in nodes] == ["user-1"]
        assert len(everything) == 2
        entry = nodes[0]
        assert entry["Service"]["Address"] == "10.0.0.1"
        assert entry["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
        assert entry["Service"]["Meta"] == {"az": "a"}
        assert entry["Node"]["Datacenter"] == "dc1"
        assert {c["CheckID"] for c in entry["Checks"]} == {"serfHealth", "service:user-1"}
        assert double.requests[0].query == {"passing": "1"}


async def test_blocking_query_returns_on_change_and_on_wait() -> None:
    async with ConsulDouble(jitter=False) as double:
        await double.set_instances("user", [Instance("user", "user-1", 8001)])
        c = consul.aio.Consul(host=double.host, port=double.port)
        try:
            index, _ = await c.health.service("user", passing=True)
            blocked = asyncio.create_task(c.health.service("user", index=index, wait="30s"))
            await asyncio.sleep(0.05)
            assert not blocked.done()
            await double.set_instances("user", [Instance("user", "user-2", 8002)])
            new_index, nodes = await asyncio.wait_for(blocked, 5)
            assert int(new_index) > int(index)
            assert [n["Service"]["ID"] for n in nodes] == ["user-2"]

            started = time.monotonic()
            same, _ = await c.health.service("user", index=new_index, wait="200ms")
            assert same == new_index
            assert time.monotonic() - started >= 0.19
        finally:
            await c.http.close()
        assert double.requests[-1].query["wait"] == "200ms"


async def test_register_maintenance_deregister_with_py_consul() -> None:
    async with ConsulDouble() as double:
        c = consul.aio.Consul(host=double.host, port=double.port)
        try:
            check = consul.Check.http(
                "http://127.0.0.1:15000/healthz", interval="10s", timeout="5s", deregister="1m"
            )
            ok = await c.agent.service.register(
                "bff",
                service_id="bff-1",
                address="127.0.0.1",
                port=15000,
                tags=["a"],
                check=check,
                replace_existing_checks=True,
            )
            assert ok is True
            services = await c.agent.services()
            assert services["bff-1"]["Service"] == "bff"
            assert services["bff-1"]["Port"] == 15000
            assert double.requests[0].query == {"replace-existing-checks": "true"}
            # new checks start critical, as in Consul
            _, passing = await c.health.service("bff", passing=True)
            assert passing == []
            await double.set_status("bff-1", "passing")
            _, passing = await c.health.service("bff", passing=True)
            assert len(passing) == 1

            assert await c.agent.service.maintenance("bff-1", True, reason="draining") is True
            _, passing = await c.health.service("bff", passing=True)
            assert passing == []
            _, allnodes = await c.health.service("bff")
            notes = {ch["CheckID"]: ch["Notes"] for ch in allnodes[0]["Checks"]}
            assert notes["_service_maintenance:bff-1"] == "draining"

            assert await c.agent.service.deregister("bff-1") is True
            assert await c.agent.services() == {}
            # a second deregister: 404 (py-consul's boolean callback maps it to False)
            assert await c.agent.service.deregister("bff-1") is False
        finally:
            await c.http.close()


async def test_unknown_deregister_is_404() -> None:
    async with ConsulDouble() as double:
        c = consul.aio.Consul(host=double.host, port=double.port)
        try:
            assert await c.agent.service.deregister("nope") is False
        finally:
            await c.http.close()


async def test_acl_tokens() -> None:
    async with ConsulDouble(acl_tokens={"reader": "read", "writer": "write"}) as double:
        await double.set_instances("user", [Instance("user", "user-1", 8001)])
        bad = consul.aio.Consul(host=double.host, port=double.port, token="wrong")
        reader = consul.aio.Consul(host=double.host, port=double.port, token="reader")
        anon = consul.aio.Consul(host=double.host, port=double.port)
        try:
            with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
                await bad.health.service("user")
            _, nodes = await reader.health.service("user")
            assert len(nodes) == 1
            _, hidden = await anon.health.service("user")
            assert hidden == []
            with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
                await reader.agent.service.register("x", service_id="x")
        finally:
            for c in (bad, reader, anon):
                await c.http.close()
        assert double.requests[0].headers["X-Consul-Token"] == "wrong"


async def test_dc_and_failure_and_catalog() -> None:
    async with ConsulDouble() as double:
        await double.set_instances("user", [Instance("user", "user-1", 8001, tags=["t"])])
        c = consul.aio.Consul(host=double.host, port=double.port)
        try:
            _, services = await c.catalog.services()
            assert services == {"consul": [], "user": ["t"]}
            with pytest.raises(consul.ConsulException, match="No path to datacenter"):
                await c.health.service("user", dc="dc9")
            double.fail_with(500)
            with pytest.raises(consul.ConsulException, match="500"):
                await c.health.service("user")
        finally:
            await c.http.close()
