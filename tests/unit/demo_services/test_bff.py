"""The bff: aggregation, sequential vs concurrent, trace-header forwarding, routing via the
sidecar's outbound port (Host header / :authority) or straight to an upstream URL; retrieval
over gRPC (the double answers it on the same port, as a sidecar's outbound listener does)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from demo_services import bff as bff_module
from demo_services.bff import propagation_headers, targets_from_env
from demo_services.faults import Faults, FaultSpec
from demo_services.grpc_wire import Code, DetectingProtocol, GrpcError, GrpcServerProtocol
from demo_services.retrieval_service import RETRIEVE

UPSTREAMS = ("user-service", "document-service", "retrieval-service")


@dataclass
class Downstream:
    """A double for the three upstreams (or for a sidecar's outbound port, routing on Host):
    records every request's headers and answers after `delay` seconds."""

    delay: dict[str, float] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    messages: list[object] = field(default_factory=list)

    def name_of(self, request: web.Request) -> str:
        path = request.path
        if path.startswith("/users/"):
            return "user-service"
        if path.startswith("/documents"):
            return "document-service"
        return "retrieval-service"

    async def handle(self, request: web.Request) -> web.Response:
        name = self.name_of(request)
        start = time.monotonic()
        self.seen.append(
            (name, request.path_qs, {k.lower(): v for k, v in request.headers.items()})
        )
        await asyncio.sleep(self.delay.get(name, 0.0))
        self.intervals[name] = (start, time.monotonic())
        status = self.status.get(name, 200)
        payload = {
            "user-service": {"id": "7", "name": "Ada"},
            "document-service": {"documents": [{"id": "7-0"}]},
            "retrieval-service": {"passages": [{"doc_id": "7-0", "score": 0.9}]},
        }[name]
        return web.json_response(payload if status == 200 else {"error": "x"}, status=status)

    async def retrieve(self, message: object, metadata: Mapping[str, str]) -> object:
        """retrieval-service's gRPC method; a non-200 `status` is UNAVAILABLE."""
        name = "retrieval-service"
        start = time.monotonic()
        headers = {**metadata, "host": metadata[":authority"]}
        self.seen.append((name, metadata[":path"], headers))
        self.messages.append(message)
        await asyncio.sleep(self.delay.get(name, 0.0))
        self.intervals[name] = (start, time.monotonic())
        if self.status.get(name, 200) != 200:
            raise GrpcError(Code.UNAVAILABLE, "double says no")
        return {"passages": [{"doc_id": "7-0", "score": 0.9}]}


@pytest.fixture
async def world():
    """Start a downstream double and a bff whose calls all go to it."""
    started: list[TestClient | web.AppRunner] = []
    servers: list[asyncio.Server] = []

    async def make(downstream: Downstream, env: dict[str, str]) -> TestClient:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", downstream.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        started.append(runner)
        http1 = runner.server
        assert http1 is not None

        def h2c() -> GrpcServerProtocol:
            return GrpcServerProtocol({RETRIEVE: downstream.retrieve})

        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: DetectingProtocol(http1, h2c), "127.0.0.1", 0)
        servers.append(server)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        full_env = {k: v.replace("{double}", base) for k, v in env.items()}
        app = bff_module.create_app(Faults(FaultSpec()), full_env)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        started.append(client)
        return client

    yield make
    for server in servers:
        server.close()
    for s in reversed(started):
        await (s.close() if isinstance(s, TestClient) else s.cleanup())


def direct_env(**extra: str) -> dict[str, str]:
    env = {"UPSTREAM_" + n.upper().replace("-", "_"): "{double}" for n in UPSTREAMS}
    return {**env, **extra}


async def test_context_aggregates_the_three_upstreams(world):
    client = await world(Downstream(), direct_env())
    resp = await client.get("/context/7", params={"q": "what changed?"})
    body = await resp.json()
    assert resp.status == 200
    assert body["user"]["name"] == "Ada"
    assert body["documents"] and body["passages"] and body["degraded"] == []
    timing = resp.headers["server-timing"]
    for name in (*UPSTREAMS, "total"):
        assert f"{name};dur=" in timing


async def test_default_routes_through_the_sidecar_outbound_with_host_header(world):
    down = Downstream()
    client = await world(down, {"SIDECAR_OUTBOUND": "{double}"})
    assert (await client.get("/context/7")).status == 200
    hosts = {name: headers["host"] for name, _, headers in down.seen}
    assert hosts == {n: n for n in UPSTREAMS}


def test_upstream_env_overrides_one_upstream_only():
    targets = targets_from_env(
        {"SIDECAR_OUTBOUND": "http://127.0.0.1:9/", "UPSTREAM_USER_SERVICE": "http://h:1/"}
    )
    assert targets["user-service"] == bff_module.Target("http://h:1", None)
    assert targets["document-service"] == bff_module.Target(
        "http://127.0.0.1:9", "document-service"
    )


async def test_trace_headers_are_forwarded_on_every_call(world):
    down = Downstream()
    client = await world(down, direct_env())
    incoming = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=opaque",
        "baggage": "tenant=acme",
        "x-request-id": "req-123",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-sampled": "1",
        "uber-trace-id": "abc:def:0:1",
        "x-unrelated": "must not leak",
    }
    assert (await client.get("/context/7", headers=incoming)).status == 200
    assert {name for name, _, _ in down.seen} == set(UPSTREAMS)
    for name, _, headers in down.seen:
        for key, value in incoming.items():
            if key == "x-unrelated":
                assert key not in headers, name
            else:
                assert headers.get(key) == value, (name, key)


def test_deadline_is_passed_on_minus_time_spent():
    out = propagation_headers({"x-sidecar-expected-timeout-ms": "1000"}, started=10.0, now=10.25)
    assert out == {"x-sidecar-expected-timeout-ms": "750"}
    spent = propagation_headers({"x-sidecar-expected-timeout-ms": "100"}, started=0.0, now=1.0)
    assert spent["x-sidecar-expected-timeout-ms"] == "0"
    assert propagation_headers({"x-sidecar-expected-timeout-ms": "soon"}, 0.0, 0.0) == {}


DELAYS = {"user-service": 0.15, "document-service": 0.2, "retrieval-service": 0.15}


async def test_sequential_mode_takes_the_sum_of_latencies(world):
    down = Downstream(delay=DELAYS)
    client = await world(down, direct_env(BFF_MODE="sequential"))
    t0 = time.monotonic()
    assert (await client.get("/context/7")).status == 200
    assert time.monotonic() - t0 >= sum(DELAYS.values()) - 0.01
    # and the calls really ran one after another
    spans = sorted(down.intervals.values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


async def test_concurrent_mode_takes_the_max_and_is_switchable_at_runtime(world):
    down = Downstream(delay=DELAYS)
    client = await world(down, direct_env())
    assert (await (await client.get("/mode")).json()) == {"mode": "sequential"}
    resp = await client.post("/mode", json={"mode": "concurrent"})
    assert (await resp.json()) == {"mode": "concurrent"}
    t0 = time.monotonic()
    body = await (await client.get("/context/7")).json()
    elapsed = time.monotonic() - t0
    assert body["mode"] == "concurrent"
    assert max(DELAYS.values()) - 0.01 <= elapsed < sum(DELAYS.values()) - 0.1
    starts = [iv[0] for iv in down.intervals.values()]
    ends = [iv[1] for iv in down.intervals.values()]
    assert max(starts) < min(ends), "all three calls were in flight together"


async def test_bad_mode_is_rejected(world):
    client = await world(Downstream(), direct_env())
    resp = await client.post("/mode", json={"mode": "parallel-ish"})
    assert resp.status == 400 and "sequential" in (await resp.json())["message"]
    assert (await client.post("/mode", data=b"{")).status == 400
    assert (await (await client.get("/mode")).json()) == {"mode": "sequential"}


async def test_failed_user_service_is_502_naming_it(world):
    client = await world(Downstream(status={"user-service": 503}), direct_env())
    resp = await client.get("/context/7")
    body = await resp.json()
    assert resp.status == 502
    assert body["error"] == "upstream_failed" and body["upstream"] == "user-service"


async def test_optional_context_degrades_instead_of_failing(world):
    client = await world(Downstream(status={"document-service": 500}), direct_env())
    resp = await client.get("/context/7")
    body = await resp.json()
    assert resp.status == 200
    assert body["degraded"] == ["document-service"] and body["documents"] == []
    assert body["passages"]


async def test_unreachable_upstream_is_reported_not_raised(world, unused_port):
    env = direct_env(UPSTREAM_RETRIEVAL_SERVICE=f"http://127.0.0.1:{unused_port}")
    client = await world(Downstream(), env)
    body = await (await client.get("/context/7")).json()
    assert body["degraded"] == ["retrieval-service"]


async def test_one_client_session_per_process(world):
    down = Downstream()
    client = await world(down, direct_env())
    bff = client.server.app[bff_module.BFF_KEY]
    session = bff._session
    for _ in range(3):
        await client.get("/context/7")
    assert bff._session is session and session is not None and not session.closed


async def test_retrieval_is_a_grpc_call_with_the_query_and_a_deadline(world):
    down = Downstream()
    client = await world(down, {"SIDECAR_OUTBOUND": "{double}"})
    incoming = {
        "x-sidecar-expected-timeout-ms": "2000",
        "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    }
    resp = await client.get("/context/7", params={"q": "refunds"}, headers=incoming)
    assert resp.status == 200
    (grpc_call,) = [h for name, _, h in down.seen if name == "retrieval-service"]
    assert grpc_call[":path"] == "/demo.retrieval.v1.Retrieval/Retrieve"
    assert grpc_call["content-type"] == "application/grpc+json"
    assert grpc_call[":authority"] == "retrieval-service"
    assert grpc_call["traceparent"] == incoming["traceparent"]
    # The caller's budget, minus what the bff spent, becomes the gRPC deadline.
    timeout = grpc_call["grpc-timeout"]
    assert timeout.endswith("m") and 1000 < int(timeout[:-1]) <= 2000
    assert down.messages == [{"query": "refunds", "user": "7", "k": 3}]


async def test_grpc_unavailable_degrades_the_answer(world):
    client = await world(Downstream(status={"retrieval-service": 503}), direct_env())
    resp = await client.get("/context/7")
    body = await resp.json()
    assert resp.status == 200 and body["degraded"] == ["retrieval-service"]
    assert body["passages"] == [] and body["user"]["name"] == "Ada"


async def test_http_retrieval_is_still_available(world):
    down = Downstream()
    client = await world(down, direct_env(BFF_RETRIEVAL_PROTOCOL="http"))
    assert (await (await client.get("/context/7")).json())["passages"]
    assert down.seen[-1][:2] == (
        "retrieval-service",
        "/retrieve",
    )
    assert down.messages == []


def test_unknown_retrieval_protocol_is_refused():
    with pytest.raises(ValueError, match="BFF_RETRIEVAL_PROTOCOL"):
        bff_module.create_app(Faults(FaultSpec()), {"BFF_RETRIEVAL_PROTOCOL": "grpc-web"})
