"""retrieval-service over gRPC (h2c) on the port that also answers HTTP/1.1, with the fault
knobs as gRPC statuses; and the bff's gRPC client against it (real sockets)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from demo_services import common, retrieval_service
from demo_services.faults import Faults, FaultSpec
from demo_services.grpc_client import Channel
from demo_services.grpc_wire import Code, format_timeout, parse_timeout
from demo_services.retrieval_service import RETRIEVE
from tests.conftest import require_binary


@pytest.fixture
async def retrieval() -> AsyncIterator[tuple[int, Faults]]:
    faults = Faults(FaultSpec(), rng=random.Random(1))
    serving = await common.start(retrieval_service.create_app(faults), "127.0.0.1", 0)
    yield serving.port, faults
    await serving.close()


@pytest.fixture
async def channel(retrieval: tuple[int, Faults]) -> AsyncIterator[Channel]:
    ch = Channel("127.0.0.1", retrieval[0], "retrieval-service")
    yield ch
    ch.close()


async def test_retrieve_over_grpc_and_http1_on_one_port(retrieval, channel):
    reply = await channel.unary(RETRIEVE, {"query": "refunds", "user": "7", "k": 2}, {}, 2.0)
    assert reply.code == Code.OK
    assert reply.data == retrieval_service.retrieve("refunds", "7", 2)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{retrieval[0]}/retrieve"
        async with session.post(url, json={"query": "refunds", "user": "7", "k": 2}) as resp:
            assert resp.status == 200 and await resp.json() == reply.data


async def test_calls_multiplex_on_one_connection(channel):
    replies = await asyncio.gather(
        *(channel.unary(RETRIEVE, {"query": f"q{i}", "k": 1}, {}, 2.0) for i in range(40))
    )
    assert [r.data["query"] for r in replies] == [f"q{i}" for i in range(40)]
    conn = channel._conn
    assert conn is not None and conn.usable


async def test_bad_requests_are_grpc_errors(channel):
    bad = await channel.unary(RETRIEVE, {"k": 2}, {}, 2.0)
    assert bad.code == Code.INVALID_ARGUMENT and "query" in bad.message
    assert (await channel.unary(RETRIEVE, {"query": "x", "k": 0}, {}, 2.0)).code == 3
    missing = await channel.unary("/demo.retrieval.v1.Retrieval/Embed", {}, {}, 2.0)
    assert missing.code == Code.UNIMPLEMENTED


async def test_injected_errors_are_unavailable(retrieval, channel):
    retrieval[1].apply(FaultSpec(error_rate=1.0))
    reply = await channel.unary(RETRIEVE, {"query": "x"}, {}, 2.0)
    assert reply.code == Code.UNAVAILABLE and "FAULT_ERROR_RATE" in reply.message
    retrieval[1].apply(FaultSpec(slow_start_s=60.0), restart_slow_start=True)
    reply = await channel.unary(RETRIEVE, {"query": "x"}, {}, 2.0)
    assert reply.code == Code.UNAVAILABLE and "warming up" in reply.message


async def test_latency_past_the_deadline_is_deadline_exceeded(retrieval, channel):
    retrieval[1].apply(FaultSpec(latency_ms=500.0))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reply = await channel.unary(RETRIEVE, {"query": "x"}, {}, 0.1)
    assert reply.code == Code.DEADLINE_EXCEEDED and loop.time() - t0 < 0.4
    # The connection survives a cancelled call.
    retrieval[1].apply(FaultSpec())
    assert (await channel.unary(RETRIEVE, {"query": "x"}, {}, 2.0)).ok


async def curl_h2(url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        require_binary("curl"), "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
        "--http2-prior-knowledge", url, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode()


async def test_healthz_over_h2_follows_slow_start(retrieval):
    url = f"http://127.0.0.1:{retrieval[0]}/healthz"
    assert await curl_h2(url) == "2 200"
    retrieval[1].apply(FaultSpec(slow_start_s=60.0), restart_slow_start=True)
    assert await curl_h2(url) == "2 503"


async def test_refused_connection_is_unavailable(unused_port):
    ch = Channel("127.0.0.1", unused_port, "retrieval-service")
    reply = await ch.unary(RETRIEVE, {"query": "x"}, {}, 1.0)
    assert reply.code == Code.UNAVAILABLE


def test_grpc_timeout_round_trip():
    assert parse_timeout(format_timeout(1.5)) == 1.5
    assert parse_timeout("3S") == 3.0 and parse_timeout("250m") == 0.25
    assert parse_timeout("soon") is None and parse_timeout(None) is None
    assert parse_timeout("1234567890m") is None  # at most 8 digits
