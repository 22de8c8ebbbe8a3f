"""The demo's gRPC hop as `sidecar demo` wires it: a gRPC client → the bff's sidecar (outbound,
the demo's policy for retrieval-service) → retrieval-service's sidecar (inbound) → the
retrieval app, with the app's error knob on: UNAVAILABLE is retried by the bff's sidecar, so
callers see OK, and the sidecars count the attempts by gRPC status."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from demo_services import common, retrieval_service
from demo_services.faults import Faults, FaultSpec
from demo_services.grpc_client import Channel
from demo_services.grpc_wire import Code
from demo_services.retrieval_service import RETRIEVE
from sidecar.demo.grpc_calls import parse_counts
from sidecar.demo.topology import GRPC_RETRIES_ON, GRPC_SERVICE
from tests.conftest import free_port


def metrics(sc: Any) -> str:
    body, _ = sc.metrics.render(None)
    return str(body.decode())


async def test_unavailable_is_retried_across_the_grpc_hop(
    sidecar_factory: Callable[..., Any],
) -> None:
    faults = Faults(FaultSpec(error_rate=0.2), rng=random.Random(7))
    serving = await common.start(retrieval_service.create_app(faults), "127.0.0.1", 0)
    try:
        callee = await sidecar_factory(
            {"service": {"name": GRPC_SERVICE, "port": serving.port}, "discovery": {"static": {}}}
        )
        inbound = callee.bound_port("listeners.inbound")
        caller = await sidecar_factory(
            {
                "service": {"name": "bff", "port": free_port()},
                "discovery": {"static": {GRPC_SERVICE: [f"127.0.0.1:{inbound}"]}},
                "upstreams": {GRPC_SERVICE: {"retries": {"on": list(GRPC_RETRIES_ON)}}},
            }
        )
        channel = Channel("127.0.0.1", caller.bound_port("listeners.outbound"), GRPC_SERVICE)
        try:
            replies = [
                await channel.unary(RETRIEVE, {"query": f"q{i}", "k": 1}, {}, 5.0)
                for i in range(30)
            ]
        finally:
            channel.close()
    finally:
        await serving.close()
    assert [r.code for r in replies] == [Code.OK] * 30
    assert all(r.data["passages"] for r in replies)
    attempts = {
        c.status: c.calls
        for c in parse_counts(metrics(caller))
        if c.side == "client" and c.upstream == GRPC_SERVICE
    }
    # ~20 % of first attempts failed with UNAVAILABLE and were sent again.
    assert attempts["OK"] == 30 and attempts.get("UNAVAILABLE", 0) >= 2, attempts
    served = {c.status: c.calls for c in parse_counts(metrics(callee)) if c.side == "server"}
    assert served == attempts
