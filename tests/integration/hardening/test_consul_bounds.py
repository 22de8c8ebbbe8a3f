"""Junk Host names against Consul discovery (issue 18, finding 10), over real sockets with the
Consul agent double: watches for names Consul does not know are bounded and cached negatively,
and the `upstream` metric label takes only configured or discovered names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.config import ConsulConfig
from sidecar.discovery.consul import MAX_LAZY_WATCHES, ConsulResolver
from sidecar.discovery.consul_http import ConsulHttp
from sidecar.discovery.resolver import Directory
from tests.doubles.consul import ConsulDouble, Instance
from tests.unit.discovery.fakes import FakeClock

JUNK = 2000


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(jitter=False) as d:
        # The listing is ACL-filtered, so the sidecar cannot tell junk from real names.
        d.catalog_filtered = True
        yield d


async def test_junk_host_names_are_bounded(double, upstreams, sidecar_factory):
    up = await upstreams("user-service")
    await double.set_instances("user-service", [Instance("user-service", "u1", up.port)])
    sc = await sidecar_factory(
        {
            "service": {"name": "bff"},
            "discovery": {"consul": {"address": double.address, "register": False}},
        }
    )
    consul = sc.discovery.consul
    port = sc.bound_port("listeners.outbound")
    url = f"http://127.0.0.1:{port}/x"
    most_watches = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Host": "user-service"}) as r:
            assert r.status == 200  # discovered lazily, not configured
        rss_before = _rss_kib()
        gate = asyncio.Semaphore(64)
        codes: list[tuple[int, str | None]] = []

        async def junk(i: int) -> None:
            nonlocal most_watches
            async with gate, s.get(url, headers={"Host": f"junk-{i}"}) as r:
                await r.read()
                codes.append((r.status, r.headers.get("x-sidecar-error")))
                most_watches = max(most_watches, len(consul.watched()))

        await asyncio.gather(*(junk(i) for i in range(JUNK)))
        rss_growth = (_rss_kib() - rss_before) / 1024
        assert codes == [(404, "no_route")] * JUNK

        # Asked again: answered from the negative cache, Consul is not asked.
        def asked() -> int:
            return sum(r.path == "/v1/health/service/junk-7" for r in double.requests)

        assert asked() == 1
        async with s.get(url, headers={"Host": "junk-7"}) as r:
            assert r.status == 404
        assert asked() == 1
        # The real name kept working through the flood.
        async with s.get(url, headers={"Host": "user-service"}) as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{sc.admin.port}/metrics") as r:
            metrics = await r.text()
    print(f"{JUNK} junk names: most watches {most_watches}, RSS +{rss_growth:.1f} MiB")
    assert most_watches <= MAX_LAZY_WATCHES + 1
    assert consul.watched() == ["user-service"]
    # A few were still waiting for their first answer when a newer name took their place.
    assert JUNK - MAX_LAZY_WATCHES <= len(consul.negative()) <= JUNK
    assert rss_growth < 20
    labels = set(re.findall(r'upstream="([^"]*)"', metrics))
    assert labels <= {"user-service", "unknown", "bff", ""}, sorted(labels)[:10]
    assert "unknown" in labels  # the junk was counted, under one label


async def test_lazy_watches_are_lru_and_expire_when_unused(double):
    for name in ("a", "b", "c", "d"):
        await double.set_instances(name, [Instance(name, f"{name}1", 8000)])
    clock = FakeClock()
    config = ConsulConfig(address=double.address)
    http = ConsulHttp(config.address)
    resolver = ConsulResolver(
        config, http, clock=clock, max_lazy_watches=3, lazy_ttl=10.0, negative_ttl=5.0
    )
    directory = Directory([resolver])
    resolver.use_directory(directory.withdraw, directory.take_used)
    directory.start()
    try:
        for name in ("a", "b", "c"):
            assert await directory.resolve(name, 5.0) is not None
        clock.advance(1)
        directory.lookup("a")  # in use: the least recently used is now b
        assert await directory.resolve("d", 5.0) is not None
        assert resolver.watched() == ["a", "c", "d"]
        assert directory.get("b") is None  # withdrawn with its watch

        clock.advance(11)
        directory.lookup("a")
        resolver.expire()
        assert resolver.watched() == ["a"]  # c and d unused for lazy_ttl

        assert await directory.resolve("nope", 5.0) is None  # empty first answer: unknown
        assert resolver.negative() == ["nope"] and not resolver.can_resolve("nope")
        assert resolver.watched() == ["a"]
        clock.advance(6)
        resolver.expire()
        assert resolver.negative() == [] and resolver.can_resolve("nope")
    finally:
        await directory.stop()
        await http.close()


async def test_an_empty_service_listed_in_the_catalog_is_not_negative(double):
    """Known to Consul but with no passing instance: 503 material, not no_route."""
    double.catalog_filtered = False
    await double.set_instances("empty", [Instance("empty", "e1", 8000)])
    await double.set_status("e1", "critical")
    config = ConsulConfig(address=double.address)
    http = ConsulHttp(config.address)
    resolver = ConsulResolver(config, http)
    directory = Directory([resolver])
    directory.start()
    try:
        await _until(lambda: resolver.can_resolve("empty") and not resolver.can_resolve("zz"))
        snap = await directory.resolve("empty", 5.0)
        assert snap is not None and snap.endpoints == ()
        assert resolver.negative() == []
    finally:
        await directory.stop()
        await http.close()


async def _until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)
