"""The demo's topology: four services, each behind its own sidecar on loopback, on ports
chosen at runtime; and the sidecar config each one runs with."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTE_TEMPLATES = [
    "/context/{user_id}",
    "/users/{id}",
    "/documents",
    "/documents/{id}",
    "/retrieve",
]
OPERATION = "GET /context/{user_id}"
ENTRY_SERVICE = "bff"
SLOW_SERVICE = "document-service"

# Everyday latency of each service before the demo injects its fault: the model-serving
# stand-in is the slowest, as it is in real agent backends.
BASELINE_FAULTS: Mapping[str, Mapping[str, str]] = {
    "bff": {},
    "user-service": {"FAULT_LATENCY_MS": "15", "FAULT_JITTER_MS": "10"},
    "document-service": {"FAULT_LATENCY_MS": "20", "FAULT_JITTER_MS": "10"},
    "retrieval-service": {"FAULT_LATENCY_MS": "60", "FAULT_JITTER_MS": "25"},
}
# How each app is called by the sidecar in front of it: the model-serving stand-in speaks gRPC
# (HTTP/2 cleartext), the others HTTP/1.1, so the demo's traces cross both kinds of hop.
PROTOCOLS: Mapping[str, str] = {
    "bff": "HTTP/1.1",
    "user-service": "HTTP/1.1",
    "document-service": "HTTP/1.1",
    "retrieval-service": "gRPC (h2c)",
}
GRPC_SERVICE = "retrieval-service"
# A gRPC UNAVAILABLE is retried like a 503 (retries.on takes gRPC status names).
GRPC_RETRIES_ON = ["connect_failure", "reset", 502, 503, "unavailable"]
# What the demo injects into document-service once traffic flows (POST /faults).
INJECTED_FAULT: Mapping[str, float] = {"latency_ms": 180.0, "jitter_ms": 120.0}


@dataclass(frozen=True)
class ServicePlan:
    name: str  # the upstream / service name, e.g. "document-service"
    module: str  # python -m <module>
    app_port: int
    inbound: int
    outbound: int
    admin: int
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return PROTOCOLS.get(self.name, "HTTP/1.1")

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def inbound_url(self) -> str:
        return f"http://127.0.0.1:{self.inbound}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


@dataclass(frozen=True)
class Export:
    """Where the sidecars also send spans (besides their /debug/traces buffer)."""

    exporter: str = "none"  # none | otlp_grpc | otlp_http
    endpoint: str = ""


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel considers free right now (held open together so no two
    are the same; a small race with other programs remains, as with any port-0 probe)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def plan(ports: list[int] | None = None) -> list[ServicePlan]:
    names = ["user-service", "document-service", "retrieval-service", "bff"]
    ports = ports if ports is not None else free_ports(4 * len(names))
    if len(ports) < 4 * len(names) or len(set(ports)) != len(ports):
        raise ValueError("need 16 distinct ports")
    plans: dict[str, ServicePlan] = {}
    for i, name in enumerate(names):
        app, inbound, outbound, admin = ports[4 * i : 4 * i + 4]
        env = dict(BASELINE_FAULTS[name])
        if name == ENTRY_SERVICE:
            env["SIDECAR_OUTBOUND"] = f"http://127.0.0.1:{outbound}"
            env["BFF_MODE"] = "sequential"
        module = "demo_services." + name.replace("-service", "_service")
        plans[name] = ServicePlan(name, module, app, inbound, outbound, admin, env)
    return [
        plans["bff"],
        plans["user-service"],
        plans["document-service"],
        plans["retrieval-service"],
    ]


def sidecar_config(
    service: ServicePlan,
    upstreams: list[ServicePlan],
    export: Export,
    consul: str | None = None,
) -> dict[str, Any]:
    """The YAML document (as data) for one service's sidecar."""
    tracing: dict[str, Any] = {
        "exporter": export.exporter,
        "sampler": "parentbased_traceidratio",
        "ratio": 1.0,
        "propagators": ["tracecontext", "baggage", "b3multi"],
        "buffer_spans": 50000,
    }
    if export.endpoint:
        tracing["endpoint"] = export.endpoint
    discovery: dict[str, Any] = {}
    if consul:
        discovery["consul"] = {"address": consul}
    else:
        discovery["static"] = {up.name: [f"127.0.0.1:{up.inbound}"] for up in upstreams}
    # Listing the names makes them routable before Consul has answered.
    policies: dict[str, Any] = {up.name: {} for up in upstreams} if consul else {}
    for up in upstreams:
        if up.name == GRPC_SERVICE:
            policies[up.name] = {"retries": {"on": list(GRPC_RETRIES_ON)}}
    return {
        "service": {
            "name": service.name,
            "address": "127.0.0.1",
            "port": service.app_port,
            "health_path": "/healthz",
        },
        "listeners": {
            "inbound": f"127.0.0.1:{service.inbound}",
            "outbound": f"127.0.0.1:{service.outbound}",
            "admin": f"127.0.0.1:{service.admin}",
        },
        "discovery": discovery,
        "upstreams": policies,
        "tracing": tracing,
        "metrics": {"enabled": True, "route_templates": list(ROUTE_TEMPLATES)},
        "logging": {"level": "warning", "access_log": False, "format": "text"},
        "admin": {"expose_debug": False},
        # The demo stops its sidecars itself; no need to wait 15 s for stragglers.
        "limits": {"drain_timeout": 1.0},
    }
