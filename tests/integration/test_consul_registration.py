"""ConsulRegistration and Lifecycle against the Consul double over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.config import ConsulConfig
from sidecar.discovery.consul import ConsulResolver
from sidecar.discovery.consul_http import ConsulHttp
from sidecar.discovery.registration import (
    ConsulRegistration,
    Lifecycle,
    ServiceRegistration,
    advertise_address,
    service_registration,
)
from sidecar.discovery.resolver import Directory
from tests.doubles.consul import ConsulDouble, Instance
from tests.unit.discovery.fakes import eventually

SERVICE = ServiceRegistration(
    name="bff",
    address="127.0.0.1",
    port=15000,
    health_path="/healthz",
    tags=["web"],
    meta={"version": "1"},
    deregister_critical_after=60,
)


async def test_register_body_has_check_and_replace_existing_checks() -> None:
    async with ConsulDouble() as double:
        http = ConsulHttp(double.address)
        try:
            await ConsulRegistration(http, SERVICE).register()
        finally:
            await http.close()
        req = double.requests[-1]
        assert req.path == "/v1/agent/service/register"
        assert req.query == {"replace-existing-checks": "true"}
        assert req.body["Name"] == "bff"
        assert req.body["ID"] == "bff-127.0.0.1-15000"
        assert (req.body["Address"], req.body["Port"]) == ("127.0.0.1", 15000)
        assert req.body["Tags"] == ["web"] and req.body["Meta"] == {"version": "1"}
        check = req.body["Check"]
        assert check["HTTP"] == "http://127.0.0.1:15000/healthz"
        assert check["DeregisterCriticalServiceAfter"] == "60s"
        assert check["Interval"] == "10s" and check["Timeout"] == "5s"
        assert double.instances["bff-127.0.0.1-15000"].registration is not None


async def test_register_retries_until_consul_is_back(caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-3f9a-secret"
    double = ConsulDouble(acl_tokens={secret: "write"})
    await double.start()
    double.fail_with(500)
    http = ConsulHttp(double.address, token=secret)
    reg = ConsulRegistration(http, SERVICE, backoff_base=0.01, backoff_max=0.05)
    task = asyncio.create_task(reg.register())
    try:
        await eventually(lambda: reg.status.startswith("consul registration pending"))
        assert "500" in reg.status
        assert not reg.registered
        double.fail_with(None)
        await asyncio.wait_for(task, 5)
        assert reg.registered and reg.status == "registered"
    finally:
        task.cancel()
        await http.close()
        await double.stop()
    assert "consul registration" in caplog.text
    assert secret not in caplog.text and secret not in reg.status


async def test_lifecycle_readiness_and_shutdown_order() -> None:
    async with ConsulDouble(jitter=False) as double:
        await double.set_instances("user", [Instance("user", "user-1", 8001)])
        http = ConsulHttp(double.address)
        resolver = ConsulResolver(ConsulConfig(address=double.address), http, names=["user"])
        directory = Directory([resolver])
        reg = ConsulRegistration(http, SERVICE)
        life = Lifecycle(resolver=resolver, registration=reg)
        reasons = life.ready_reasons()
        assert "starting" in reasons
        assert "discovery not yet synced: user" in reasons
        try:
            directory.start()
            await life.start()
            await eventually(lambda: life.ready_reasons() == [])
            sid = SERVICE.service_id
            await double.set_status(sid, "passing")

            drained = asyncio.Event()
            seen_at_drain: list[str] = []

            async def drain() -> None:
                # at drain time the instance is already in maintenance: callers stop picking it
                seen_at_drain.extend(r.path for r in double.requests)
                assert life.ready_reasons() == ["draining"]
                drained.set()

            await life.shutdown(drain)
            assert drained.is_set()
        finally:
            await directory.stop()
            await http.close()
        writes = [r for r in double.requests if r.method == "PUT"]
        assert [r.path for r in writes] == [
            "/v1/agent/service/register",
            f"/v1/agent/service/maintenance/{sid}",
            f"/v1/agent/service/deregister/{sid}",
        ]
        assert writes[1].query["enable"] == "true"
        assert f"/v1/agent/service/maintenance/{sid}" in seen_at_drain
        assert f"/v1/agent/service/deregister/{sid}" not in seen_at_drain
        assert sid not in double.instances


async def test_lifecycle_shutdown_while_consul_never_answered() -> None:
    double = ConsulDouble()
    await double.start()
    await double.stop()  # port is now closed
    http = ConsulHttp(double.address)
    reg = ConsulRegistration(http, SERVICE, backoff_base=0.01, backoff_max=0.05)
    life = Lifecycle(registration=reg)
    try:
        await life.start()
        await eventually(lambda: any("pending" in r for r in life.ready_reasons()))
        drained: list[bool] = []

        async def drain() -> None:
            drained.append(True)

        await life.shutdown(drain)
        assert drained == [True]
    finally:
        await http.close()


def test_advertise_address() -> None:
    assert advertise_address("10.1.2.3", "127.0.0.1") == "10.1.2.3"
    assert advertise_address("0.0.0.0", "127.0.0.1")  # some address, never the wildcard
    assert advertise_address("0.0.0.0", "127.0.0.1") != "0.0.0.0"


def test_service_registration_from_config_values() -> None:
    reg = service_registration(
        name="bff",
        inbound="127.0.0.2:15000",
        service_address="127.0.0.1",
        health_path="/health",
        tags=["a"],
        meta={},
        deregister_critical_after=90,
    )
    assert reg.service_id == "bff-127.0.0.2-15000"
    assert reg.body()["Check"]["HTTP"] == "http://127.0.0.2:15000/health"
    assert reg.body()["Check"]["DeregisterCriticalServiceAfter"] == "90s"
