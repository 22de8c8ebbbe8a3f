"""ConsulResolver against the Consul double over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.config import ConsulConfig
from sidecar.discovery.consul import ConsulResolver
from sidecar.discovery.consul_http import ConsulHttp
from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Directory
from sidecar.vocab.endpoint import Endpoint
from tests.doubles.consul import ConsulDouble, Instance
from tests.unit.discovery.fakes import FakeClock, RecordingObserver, eventually


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(jitter=False) as d:
        await d.set_instances(
            "user",
            [
                Instance("user", "user-1", 8001, address="10.0.0.1", tags=["v1"], meta={"az": "a"}),
                Instance("user", "user-2", 8002, address="10.0.0.2"),
                Instance("user", "user-3", 8003, node="n3", node_address="10.0.0.3"),
            ],
        )
        await d.set_status("user-2", "critical")
        yield d


class Harness:
    def __init__(self, double: ConsulDouble, **kw: object) -> None:
        cfg_keys = {k: kw.pop(k) for k in ("wait", "stale_after", "token", "datacenter") if k in kw}
        self.config = ConsulConfig(address=double.address, **cfg_keys)  # type: ignore[arg-type]
        self.http = ConsulHttp(
            self.config.address, token=self.config.token, datacenter=self.config.datacenter
        )
        self.observer = RecordingObserver()
        kw.setdefault("names", ["user"])
        self.resolver = ConsulResolver(self.config, self.http, observer=self.observer, **kw)  # type: ignore[arg-type]
        self.directory = Directory([self.resolver])
        self.snapshots: list[EndpointSet] = []
        self.directory.subscribe(self.snapshots.append)

    def endpoints(self, name: str = "user") -> tuple[Endpoint, ...] | None:
        snap = self.directory.get(name)
        return None if snap is None else snap.endpoints

    async def __aenter__(self) -> Harness:
        self.directory.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.directory.stop()
        await self.http.close()


def ports(eps: tuple[Endpoint, ...] | None) -> list[int]:
    return sorted(e.port for e in eps or ())


async def test_routes_only_passing_instances_with_addresses_and_metadata(
    double: ConsulDouble,
) -> None:
    async with Harness(double) as h:
        assert await h.resolver.wait_synced(3)
        eps = h.endpoints()
        assert ports(eps) == [8001, 8003]  # the critical user-2 never appears
        by_port = {e.port: e for e in eps or ()}
        assert by_port[8001].host == "10.0.0.1"
        assert by_port[8001].tags == ("v1",)
        assert by_port[8001].meta == {"az": "a"}
        assert by_port[8003].host == "10.0.0.3"  # empty Service.Address → Node.Address
        assert h.snapshots[-1].source == "consul"
        assert h.observer.updates[0][:2] == ("user", "consul")


async def test_follows_changes_within_a_second_with_index_and_passing(double: ConsulDouble) -> None:
    async with Harness(double, wait=30) as h:
        assert await h.resolver.wait_synced(3)
        await eventually(lambda: len(double.health_requests("user")) >= 2)  # now blocking
        started = time.monotonic()
        await double.set_status("user-2", "passing")
        await eventually(lambda: ports(h.endpoints()) == [8001, 8002, 8003], within=1.0)
        await double.set_status("user-1", "critical")
        await eventually(lambda: ports(h.endpoints()) == [8002, 8003], within=1.0)
        assert time.monotonic() - started < 2.0
    reqs = double.health_requests("user")
    assert "index" not in reqs[0].query  # first call is non-blocking
    for r in reqs:
        assert r.query["passing"] == "1"
    for r in reqs[1:]:
        assert int(r.query["index"]) >= 1
        assert r.query["wait"] == "30s"


async def test_a_return_is_not_a_change(double: ConsulDouble) -> None:
    async with Harness(double, wait=30) as h:
        assert await h.resolver.wait_synced(3)
        for _ in range(3):
            before = len(double.health_requests("user"))
            await double.touch()  # index moves because of something else
            await eventually(lambda: len(double.health_requests("user")) > before)  # noqa: B023
        assert len([s for s in h.snapshots if s.upstream == "user"]) == 1
        assert len(h.observer.updates) == 1


async def test_index_going_backwards_resets_to_a_non_blocking_query(double: ConsulDouble) -> None:
    async with Harness(double, wait=1) as h:
        assert await h.resolver.wait_synced(3)
        await eventually(lambda: len(double.health_requests("user")) >= 2)
        high = int(double.health_requests("user")[-1].query["index"])
        await double.reset_index(1)
        await eventually(
            lambda: any("index" not in r.query for r in double.health_requests("user")[2:]), 4
        )
        await eventually(lambda: double.health_requests("user")[-1].query.get("index") == "1", 4)
        assert high > 1
        assert all(int(r.query.get("index", "1")) >= 1 for r in double.health_requests())


async def test_rate_limited_when_consul_returns_at_once(double: ConsulDouble) -> None:
    double.set_immediate(True)
    async with Harness(double, rate=5.0, burst=2, watch_catalog=False) as h:
        assert await h.resolver.wait_synced(3)
        start_count = len(double.health_requests("user"))
        await asyncio.sleep(1.0)  # measuring a rate over a window, not synchronising
        count = len(double.health_requests("user")) - start_count
    assert 2 <= count <= 8, count  # ~5/s; unthrottled this would be hundreds
    assert len(h.snapshots) == 1


async def test_outage_keeps_endpoints_until_stale_after_then_empties(double: ConsulDouble) -> None:
    clock = FakeClock()
    async with Harness(
        double, stale_after=60, clock=clock, backoff_base=0.01, backoff_max=0.05
    ) as h:
        assert await h.resolver.wait_synced(3)
        await double.stop()
        await eventually(lambda: len(h.observer.errors) >= 3)
        assert ports(h.endpoints()) == [8001, 8003]  # Consul error: last known endpoints stay
        clock.advance(59)
        errors = len(h.observer.errors)
        await eventually(lambda: len(h.observer.errors) >= errors + 2)
        assert ports(h.endpoints()) == [8001, 8003]
        clock.advance(2)
        await eventually(lambda: h.endpoints() == ())  # stale: 503 no_healthy_endpoints
        await double.restart()
        await eventually(lambda: ports(h.endpoints()) == [8001, 8003], within=5)


async def test_empty_passing_set_is_applied_at_once(double: ConsulDouble) -> None:
    async with Harness(double, wait=30) as h:
        assert await h.resolver.wait_synced(3)
        await double.set_status("user-1", "critical")
        await double.set_status("user-3", "critical")
        await eventually(lambda: h.endpoints() == (), within=1.0)
        snap = h.directory.get("user")
        assert snap is not None and snap.endpoints == ()


async def test_token_sent_as_header_and_never_logged(
    double: ConsulDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "5e3c7e7-super-secret-token"
    double.acl_tokens = {secret: "read"}
    async with Harness(double, token=secret) as h:
        assert await h.resolver.wait_synced(3)
        assert ports(h.endpoints()) == [8001, 8003]
        double.acl_tokens = {"another": "read"}  # our token is revoked: 403 ACL not found
        await double.touch()
        await eventually(lambda: len(h.observer.errors) >= 2)
        await double.stop()
        await eventually(lambda: len(h.observer.errors) >= 4)
        assert "ACL not found" in caplog.text
        assert secret not in repr(h.http)
    for r in double.requests:
        assert r.headers.get("X-Consul-Token") == secret
        assert "token" not in r.query
    assert secret not in caplog.text


async def test_datacenter_is_sent(double: ConsulDouble) -> None:
    async with Harness(double, datacenter="dc1") as h:
        assert await h.resolver.wait_synced(3)
    assert all(r.query.get("dc") == "dc1" for r in double.health_requests())


async def test_lazy_watch_for_a_discovered_name_and_unknown_names(double: ConsulDouble) -> None:
    await double.set_instances("docs", [Instance("docs", "docs-1", 9001)])
    async with Harness(double, names=[]) as h:
        await eventually(lambda: any(r.path == "/v1/catalog/services" for r in double.requests))
        await eventually(lambda: not h.resolver.can_resolve("nope"))
        assert h.resolver.watched() == []
        assert h.directory.is_routable("docs")
        snap = await h.directory.resolve("docs", timeout=3)
        assert snap is not None and ports(snap.endpoints) == [9001]
        assert h.resolver.watched() == ["docs"]
        assert await h.directory.resolve("nope", timeout=0.5) is None  # → 404 no_route
        assert not double.health_requests("nope")


async def test_consul_down_at_start_publishes_empty_and_recovers() -> None:
    double = ConsulDouble(jitter=False)
    await double.start()
    await double.set_instances("user", [Instance("user", "user-1", 8001)])
    await double.stop()
    async with Harness(double, backoff_base=0.01, backoff_max=0.05) as h:
        await eventually(lambda: h.endpoints() == ())
        assert h.resolver.pending_sync() == ["user"]
        await double.start()
        assert await h.resolver.wait_synced(5)
        assert ports(h.endpoints()) == [8001]
        assert h.resolver.pending_sync() == []
    await double.stop()
