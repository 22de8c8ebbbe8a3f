"""The whole sidecar on Consul discovery, against the Consul agent double over real sockets:
only passing instances get traffic, changes are followed within a second, an outage keeps the
last endpoints until `stale_after`, an empty passing set is applied at once, registration gates
/readyz, and SIGTERM on a real process does maintenance → drain → deregister in that order."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.app import Sidecar
from sidecar.config import build_config
from tests.conftest import free_port
from tests.doubles.consul import ConsulDouble, Instance
from tests.doubles.upstream import Upstream
from tests.unit.discovery.fakes import eventually

SIDECAR = [sys.executable, "-m", "sidecar.cli"]


def _consul_config(double: ConsulDouble, **consul: Any) -> dict[str, Any]:
    return {
        "service": {"name": "bff"},
        "discovery": {"consul": {"address": double.address, "register": False, **consul}},
        "upstreams": {"user-service": {"retries": {"attempts": 0}}},
    }


async def _call(session: aiohttp.ClientSession, sc: Sidecar, host: str) -> tuple[int, str]:
    port = sc.bound_port("listeners.outbound")
    async with session.get(f"http://127.0.0.1:{port}/x", headers={"Host": host}) as r:
        body = await r.json()
        # Errors the sidecar produces are named by x-sidecar-error; answers by the upstream.
        return r.status, r.headers.get("x-sidecar-error") or body["upstream"]


async def _spread(sc: Sidecar, host: str, n: int = 20) -> Counter[tuple[int, str]]:
    async with aiohttp.ClientSession() as s:
        return Counter([await _call(s, sc, host) for _ in range(n)])


async def test_routes_only_to_passing_instances_and_follows_changes_within_a_second(
    upstreams: Any, sidecar_factory: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    async with ConsulDouble() as double:
        await double.set_instances(
            "user-service",
            [Instance("user-service", "a", a.port), Instance("user-service", "b", b.port)],
        )
        await double.set_status("b", "critical")
        sc = await sidecar_factory(_consul_config(double))
        await eventually(lambda: sc.directory.get("user-service") is not None)
        assert await _spread(sc, "user-service") == Counter({(200, "a"): 20})
        assert not b.seen, "a critical instance must never get traffic"

        await double.set_status("b", "passing")
        await double.set_status("a", "critical")
        changed = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while (await _call(s, sc, "user-service")) != (200, "b"):
                assert time.monotonic() - changed < 1.0, "catalog change not followed within 1s"
        assert await _spread(sc, "user-service") == Counter({(200, "b"): 20})

    queries = double.health_requests("user-service")
    assert all("passing" in q.query for q in queries)
    assert any(int(q.query.get("index", "0")) >= 1 for q in queries[1:])
    assert all(q.query.get("index") != "0" for q in queries)


async def test_a_name_only_consul_knows_is_routable_and_an_unknown_one_is_404(
    upstreams: Any, sidecar_factory: Any
) -> None:
    doc = await upstreams("doc")
    async with ConsulDouble() as double:
        await double.set_instances(
            "document-service", [Instance("document-service", "d1", doc.port)]
        )
        sc = await sidecar_factory(_consul_config(double))
        consul = sc.discovery.consul
        assert consul is not None
        # Once the catalog has been read, a name Consul never heard of is not ours to resolve.
        await eventually(lambda: not consul.can_resolve("no-such-service"))
        assert await _spread(sc, "document-service", 3) == Counter({(200, "doc"): 3})
        assert await _spread(sc, "no-such-service", 1) == Counter({(404, "no_route"): 1})


async def test_empty_passing_set_is_503_at_once(upstreams: Any, sidecar_factory: Any) -> None:
    a = await upstreams("a")
    async with ConsulDouble() as double:
        await double.set_instances("user-service", [Instance("user-service", "a", a.port)])
        sc = await sidecar_factory(_consul_config(double))
        await eventually(lambda: sc.directory.get("user-service") is not None)
        assert await _spread(sc, "user-service", 2) == Counter({(200, "a"): 2})
        await double.set_status("a", "critical")  # Consul: nobody is healthy
        await eventually(lambda: not sc.directory.get("user-service").endpoints, within=1.0)  # type: ignore[union-attr]
        assert await _spread(sc, "user-service", 2) == Counter({(503, "no_healthy_endpoints"): 2})


async def test_consul_outage_keeps_last_endpoints_until_stale_after(
    upstreams: Any, sidecar_factory: Any
) -> None:
    a = await upstreams("a")
    double = await ConsulDouble().start()
    try:
        await double.set_instances("user-service", [Instance("user-service", "a", a.port)])
        sc = await sidecar_factory(_consul_config(double, stale_after="2s"))
        await eventually(lambda: sc.directory.get("user-service") is not None)
        await double.stop()  # Consul dies
        killed = time.monotonic()
        # Serving from the last known endpoints throughout the outage...
        await eventually(lambda: _errors(sc) >= 1, within=3.0)
        assert await _spread(sc, "user-service", 5) == Counter({(200, "a"): 5})
        # ...until stale_after, then 503.
        await eventually(lambda: not sc.directory.get("user-service").endpoints, within=6.0)  # type: ignore[union-attr]
        assert time.monotonic() - killed >= 1.9
        assert await _spread(sc, "user-service", 2) == Counter({(503, "no_healthy_endpoints"): 2})
        # Consul is back: endpoints return without a restart.
        await double.start()
        await eventually(lambda: bool(sc.directory.get("user-service").endpoints), within=15.0)  # type: ignore[union-attr]
        assert await _spread(sc, "user-service", 2) == Counter({(200, "a"): 2})
    finally:
        await double.stop()


def _errors(sc: Sidecar) -> float:
    return sum(
        s.value
        for m in sc.metrics.discovery_errors.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("source") == "consul"
    )


async def test_readyz_waits_for_consul_and_registration_while_static_keeps_serving(
    upstreams: Any, sidecar_factory: Any
) -> None:
    app, static = await upstreams("app"), await upstreams("static")
    double = await ConsulDouble().start()
    double.fail_with(500)  # Consul has a bad minute at our start
    try:
        sc = await sidecar_factory(
            {
                "service": {"name": "bff", "port": app.port},
                "discovery": {
                    "static": {"pinned": [f"127.0.0.1:{static.port}"]},
                    "consul": {"address": double.address},
                },
                "upstreams": {"user-service": {}},
            }
        )
        admin = int(sc.config.listeners.admin.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert r.status == 503
                reasons = " ".join((await r.json())["reasons"])
            assert "user-service" in reasons
            assert await _spread(sc, "pinned", 2) == Counter({(200, "static"): 2})
            assert _errors(sc) >= 1

            double.fail_with(None)

            async def ready() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    return r.status == 200

            deadline = time.monotonic() + 15
            while not await ready():
                assert time.monotonic() < deadline, "never became ready after Consul came back"
                await asyncio.sleep(0.05)
        registered = [r for r in double.requests if r.path == "/v1/agent/service/register"]
        ok = registered[-1]
        inbound = sc.bound_port("listeners.inbound")
        assert ok.body["Port"] == int(sc.config.listeners.inbound.rsplit(":", 1)[1]) == inbound
        assert ok.body["Check"]["HTTP"].endswith(f":{inbound}/healthz")
    finally:
        await double.stop()


async def test_sigterm_does_maintenance_then_drain_then_deregister_with_no_failed_requests(
    tmp_path: Path,
) -> None:
    slow = Upstream("slow", delay=0.3)
    await slow.start()
    app = await Upstream("app").start()
    inbound, outbound, admin = free_port(), free_port(), free_port()
    async with ConsulDouble() as double:
        cfg = tmp_path / "sidecar.yaml"
        cfg.write_text(
            f"service: {{name: bff, port: {app.port}}}\n"
            f"listeners: {{inbound: '127.0.0.1:{inbound}', outbound: '127.0.0.1:{outbound}', "
            f"admin: '127.0.0.1:{admin}'}}\n"
            f"discovery: {{static: {{slow-service: ['127.0.0.1:{slow.port}']}}, "
            f"consul: {{address: '{double.address}'}}}}\n"
            "limits: {drain_timeout: 10s}\ntracing: {exporter: none}\n"
        )
        proc = await asyncio.create_subprocess_exec(
            *SIDECAR, "run", "-c", str(cfg), stderr=asyncio.subprocess.PIPE
        )
        try:
            await eventually(lambda: any(i.registration for i in double.instances.values()), 15)
            sid = next(iter(double.instances))

            async def one(session: aiohttp.ClientSession) -> int:
                url = f"http://127.0.0.1:{outbound}/x"
                async with session.get(url, headers={"Host": "slow-service"}) as r:
                    await r.read()
                    return r.status

            async with aiohttp.ClientSession() as s:
                in_flight = [asyncio.create_task(one(s)) for _ in range(5)]
                await eventually(lambda: len(slow.seen) == 5)
                proc.send_signal(signal.SIGTERM)
                await eventually(lambda: f"_service_maintenance:{sid}" in _checks(double, sid))
                # Orchestrators see it too.
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    assert r.status == 503 and "draining" in (await r.json())["reasons"]
                # A late arrival (a caller that has not seen the maintenance yet) is served.
                late = asyncio.create_task(one(s))
                statuses = await asyncio.gather(*in_flight, late)
                deregistered_early = any("/deregister/" in r.path for r in double.requests)
            assert statuses == [200] * 6
            assert not deregistered_early, "deregistered before the drain finished"
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await slow.stop()
            await app.stop()
    order = [
        r.path.split("/")[4]
        for r in double.requests
        if r.path.startswith("/v1/agent/service/") and r.method == "PUT"
    ]
    assert order == ["register", "maintenance", "deregister"], order
    maint = next(r for r in double.requests if "/maintenance/" in r.path)
    assert maint.query["enable"] == "true"
    assert sid not in double.instances


def _checks(double: ConsulDouble, sid: str) -> dict[str, Any]:
    inst = double.instances.get(sid)
    return inst.checks if inst is not None else {}


async def test_file_discovery_through_the_sidecar_follows_changes_and_survives_a_bad_file(
    tmp_path: Path, upstreams: Any, sidecar_factory: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(f"user-service: ['127.0.0.1:{a.port}']\n")
    sc = await sidecar_factory(
        {"service": {"name": "bff"}, "discovery": {"file": {"path": str(endpoints)}}}
    )
    await eventually(lambda: sc.directory.get("user-service") is not None)
    assert await _spread(sc, "user-service", 3) == Counter({(200, "a"): 3})
    # The first good read of the file is what readiness waits for.
    await eventually(lambda: sc.lifecycle.ready_reasons() == [])

    # Atomic replace, as config management tools do it.
    new = tmp_path / "endpoints.new"
    new.write_text(f"user-service: ['127.0.0.1:{b.port}']\n")
    new.replace(endpoints)
    await eventually(lambda: sc.directory.get("user-service").endpoints[0].port == b.port)  # type: ignore[union-attr]
    assert await _spread(sc, "user-service", 3) == Counter({(200, "b"): 3})

    endpoints.write_text("user-service: ['not an address']\n")
    file_resolver = sc.discovery.file
    assert file_resolver is not None
    await eventually(lambda: file_resolver.last_error is not None)
    assert "invalid address" in file_resolver.last_error  # type: ignore[operator]
    assert await _spread(sc, "user-service", 3) == Counter({(200, "b"): 3})


async def test_reload_watches_newly_configured_names_from_consul(
    upstreams: Any, sidecar_factory: Any
) -> None:
    pay = await upstreams("pay")
    async with ConsulDouble() as double:
        await double.set_instances("payment-service", [Instance("payment-service", "p", pay.port)])
        data = _consul_config(double)
        sc = await sidecar_factory(data)
        consul = sc.discovery.consul
        assert consul is not None and "payment-service" not in consul.watched()
        new = {**data, "upstreams": {**data["upstreams"], "payment-service": {}}}
        new["listeners"] = sc.config.listeners.model_dump()
        sc.reload(build_config(new, env={}))
        assert "payment-service" in consul.watched()
        await eventually(lambda: sc.directory.get("payment-service") is not None)
        assert await _spread(sc, "payment-service", 2) == Counter({(200, "pay"): 2})
