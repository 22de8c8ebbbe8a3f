"""A Consul outage is two log lines per watch — one when Consul stops answering, one when it
answers again — however many retries it takes; likewise a registration that keeps failing.
Against the Consul double over real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from sidecar.config import ConsulConfig
from sidecar.discovery.consul import ConsulResolver
from sidecar.discovery.consul_http import ConsulHttp
from sidecar.discovery.registration import ConsulRegistration, service_registration
from sidecar.discovery.resolver import Directory
from tests.doubles.consul import ConsulDouble, Instance
from tests.unit.discovery.fakes import RecordingObserver, eventually

RETRIES = 30


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(jitter=False) as d:
        await d.set_instances("user", [Instance("user", "user-1", 8001, address="10.0.0.1")])
        yield d


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_watch_logs_an_outage_once_and_its_end_once(
    double: ConsulDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = ConsulConfig(address=double.address, stale_after=600)
    http = ConsulHttp(config.address)
    observer = RecordingObserver()
    resolver = ConsulResolver(
        config,
        http,
        names=["user"],
        observer=observer,
        backoff_base=0.005,
        backoff_max=0.01,
        rate=1000,
        burst=1000,
    )
    directory = Directory([resolver])
    directory.start()
    try:
        assert await resolver.wait_synced(3)
        double.fail_with(500)
        await double.touch()  # end the blocking query now
        await eventually(lambda: len(observer.errors) >= RETRIES, within=10)
        double.fail_with(None)
        await eventually(lambda: len(warnings(caplog)) >= 2, within=10)
    finally:
        await directory.stop()
        await http.close()
    lines = warnings(caplog)
    assert len(lines) == 2, lines
    assert "consul watch user" in lines[0] and "keeping 1 last known endpoints" in lines[0]
    assert "consul watch user: Consul answers again" in lines[1] and "1 endpoints" in lines[1]


async def test_registration_logs_its_first_failure_and_its_success(
    double: ConsulDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    http = ConsulHttp(double.address)
    registration = ConsulRegistration(
        http,
        service_registration(
            name="orders",
            inbound="127.0.0.1:15000",
            service_address="127.0.0.1",
            health_path="/healthz",
            tags=[],
            meta={},
            deregister_critical_after=60,
        ),
        backoff_base=0.005,
        backoff_max=0.01,
    )
    double.fail_with(500)
    task = asyncio.create_task(registration.register())
    try:
        await eventually(lambda: len(double.requests) >= RETRIES, within=10)
        double.fail_with(None)
        await eventually(lambda: registration.registered, within=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.close()
    lines = warnings(caplog)
    assert len(lines) == 2, lines
    assert "consul registration of orders" in lines[0] and "failed" in lines[0]
    assert "registered orders" in lines[1] and "failed attempts" in lines[1]
