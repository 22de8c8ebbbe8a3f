"""Fault knobs: parsing, validation, and what each knob does to requests."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp.test_utils import TestClient, TestServer

from demo_services import user_service
from demo_services.faults import Faults, FaultSpec, FaultSpecError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_spec_from_env_reads_every_knob():
    spec = FaultSpec.from_env(
        {
            "FAULT_LATENCY_MS": "120",
            "FAULT_JITTER_MS": "30.5",
            "FAULT_ERROR_RATE": "0.25",
            "FAULT_HANG": "true",
            "FAULT_SLOW_START_S": "2",
        }
    )
    assert spec == FaultSpec(120.0, 30.5, 0.25, True, 2.0)
    assert FaultSpec.from_env({}) == FaultSpec()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latency_ms": -1}, "latency_ms: must not be negative"),
        ({"error_rate": 1.5}, "error_rate: must be between 0 and 1"),
        ({"hang": "yes"}, "hang: expected true or false"),
        ({"jitter_ms": "10"}, "jitter_ms: expected a number"),
        ({"latency_ms": True}, "latency_ms: expected a number"),
        ({"colour": 1}, "unknown fault field(s): colour"),
    ],
)
def test_invalid_changes_name_the_field(changes, message):
    with pytest.raises(FaultSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FaultSpec().updated(changes)


def test_env_garbage_is_an_error():
    with pytest.raises(FaultSpecError, match="FAULT_LATENCY_MS"):
        FaultSpec.from_env({"FAULT_LATENCY_MS": "slow"})


def test_latency_is_fixed_plus_seeded_jitter():
    spec = FaultSpec(latency_ms=100, jitter_ms=50)
    a = Faults(spec, rng=random.Random(7))
    b = Faults(spec, rng=random.Random(7))
    delays = [a.delay_s() for _ in range(200)]
    assert delays == [b.delay_s() for _ in range(200)]  # reproducible with a seed
    assert all(0.100 <= d <= 0.150 for d in delays)
    assert max(delays) - min(delays) > 0.03  # the jitter is really there


def test_error_rate_is_honoured_statistically():
    faults = Faults(FaultSpec(error_rate=0.3), rng=random.Random(1))
    failures = sum(faults.should_fail() for _ in range(5000))
    assert 1300 < failures < 1700
    assert not any(Faults(FaultSpec(), rng=random.Random(1)).should_fail() for _ in range(100))


def test_slow_start_window_follows_the_clock_and_restarts_when_set():
    clock = FakeClock()
    faults = Faults(FaultSpec(slow_start_s=2), clock=clock)
    assert faults.starting()
    clock.now += 2.5
    assert not faults.starting()
    faults.apply(faults.spec.updated({"latency_ms": 5}))  # other knobs do not restart it
    assert not faults.starting()
    faults.apply(faults.spec.updated({"slow_start_s": 1}), restart_slow_start=True)
    assert faults.starting()
    clock.now += 1.01
    assert not faults.starting()


@pytest.fixture
async def client_for():
    clients: list[TestClient] = []

    async def make(faults: Faults) -> TestClient:
        client = TestClient(TestServer(user_service.create_app(faults), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


async def test_post_faults_changes_behaviour_and_get_reports_it(client_for):
    client = await client_for(Faults(rng=random.Random(3)))
    assert (await client.get("/users/1")).status == 200

    resp = await client.post("/faults", json={"error_rate": 1.0})
    assert resp.status == 200 and (await resp.json())["error_rate"] == 1.0
    failed = await client.get("/users/1")
    assert failed.status == 500
    assert (await failed.json())["error"] == "injected_fault"
    # the knobs and health stay reachable while the service fails
    assert (await client.get("/healthz")).status == 200
    assert (await (await client.get("/faults")).json())["error_rate"] == 1.0

    assert (await client.post("/faults", json={"error_rate": 0})).status == 200
    assert (await client.get("/users/1")).status == 200


async def test_post_faults_rejects_bad_input_without_changing_anything(client_for):
    client = await client_for(Faults())
    resp = await client.post("/faults", json={"latency_ms": -5})
    assert resp.status == 400
    assert "latency_ms" in (await resp.json())["message"]
    assert (await client.post("/faults", data=b"not json")).status == 400
    assert (await client.post("/faults", json=[1, 2])).status == 400
    assert (await (await client.get("/faults")).json())["latency_ms"] == 0.0


async def test_latency_knob_delays_responses(client_for):
    client = await client_for(Faults())
    await client.post("/faults", json={"latency_ms": 200})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await client.get("/users/1")).status == 200
    assert loop.time() - t0 >= 0.19


async def test_hang_holds_requests_until_released(client_for):
    client = await client_for(Faults())
    await client.post("/faults", json={"hang": True})
    pending = asyncio.create_task(client.get("/users/9"))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "a hanging service must not answer"
    await client.post("/faults", json={"hang": False})
    resp = await asyncio.wait_for(pending, 5)
    assert resp.status == 200


async def test_slow_start_makes_health_and_requests_503(client_for):
    clock = FakeClock()
    client = await client_for(Faults(FaultSpec(slow_start_s=5), clock=clock))
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["status"] == "starting"
    assert (await client.get("/users/1")).status == 503
    clock.now += 6
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/users/1")).status == 200
