"""UpstreamRegistry: per-upstream state built on first use, kept across discovery updates,
rebuilt from the new policy after a reload; and what a reload cannot apply."""

from __future__ import annotations

import time
from typing import Any

from sidecar.clock import SystemClock
from sidecar.config import Config, build_config
from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Directory
from sidecar.discovery.static import StaticResolver
from sidecar.http import Request, Response
from sidecar.registry import UpstreamRegistry
from sidecar.resilience.breaker import CircuitBreaker
from sidecar.runtime import restart_needed
from sidecar.stack import Handler
from sidecar.telemetry.metrics import Metrics
from sidecar.transport.client import UpstreamClient
from sidecar.vocab.endpoint import Endpoint


def _config(**upstreams: Any) -> Config:
    return build_config({"service": {"name": "svc"}, "upstreams": upstreams}, env={})


def _registry(config: Config) -> tuple[UpstreamRegistry, Directory, list[str]]:
    directory = Directory([StaticResolver({})])
    registry = UpstreamRegistry(
        config, SystemClock(), Metrics("svc", []), directory, UpstreamClient()
    )
    built: list[str] = []

    def build(name: str) -> Handler:
        built.append(name)
        registry.parts(name)

        async def handle(request: Request) -> Response:
            raise AssertionError("not called")

        return handle

    registry.build = build
    return registry, directory, built


def _snapshot(name: str, *ports: int) -> EndpointSet:
    endpoints = tuple(Endpoint("127.0.0.1", p) for p in ports)
    return EndpointSet(name, endpoints, "static", time.time())


def test_a_path_is_built_once_per_upstream_and_again_after_a_reload() -> None:
    registry, _, built = _registry(_config())
    first = registry.stack_for("users")
    assert registry.stack_for("users") is first
    registry.stack_for("orders")
    assert built == ["users", "orders"]
    registry.reload(_config())
    assert registry.stack_for("users") is not first
    assert built == ["users", "orders", "users"]


def test_a_reload_gives_new_breakers_from_the_new_policy_but_keeps_clusters() -> None:
    registry, directory, _ = _registry(_config())
    directory.publish(_snapshot("users", 8001, 8002))
    registry.stack_for("users")
    cluster, breaker = registry.clusters["users"], registry.breakers["users"]
    assert isinstance(breaker, CircuitBreaker)
    registry.reload(_config(users={"circuit_breaker": {"enabled": False}}))
    registry.stack_for("users")
    assert registry.clusters["users"] is cluster
    assert registry.breakers["users"] is not breaker


def test_discovery_snapshots_update_the_cluster_in_place() -> None:
    registry, directory, _ = _registry(_config())
    directory.publish(_snapshot("users", 8001))
    cluster = registry.cluster("users")
    assert [s.endpoint.port for s in cluster.states] == [8001]
    directory.publish(_snapshot("users", 8001, 8002))
    assert registry.cluster("users") is cluster
    assert [s.endpoint.port for s in cluster.states] == [8001, 8002]


def test_a_reload_names_what_needs_a_restart() -> None:
    base = {"service": {"name": "svc"}, "listeners": {"outbound": "127.0.0.1:15001"}}
    same = build_config(base, env={})
    policy_only = build_config(
        {**base, "upstreams": {"users": {"retries": {"attempts": 3}}}}, env={}
    )
    moved = build_config({**base, "listeners": {"outbound": "127.0.0.1:25001"}}, env={})
    assert restart_needed(same, policy_only) == []
    [warning] = restart_needed(same, moved)
    assert "listener addresses" in warning


class _Source:
    """A second discovery source, by name only (the directory merges by `source`)."""

    def __init__(self, source: str) -> None:
        self.source = source


def test_a_name_no_source_lists_any_more_has_its_cluster_emptied() -> None:
    # Whichever source drops it (a reload's static table, the endpoint file, egress, a Consul
    # watch): no snapshot replaces the last one, so the directory says so to the registry.
    config = _config(users={"timeouts": {"total": "2s"}})
    directory = Directory([StaticResolver({}), _Source("file")])  # type: ignore[list-item]
    registry = UpstreamRegistry(
        config, SystemClock(), Metrics("svc", []), directory, UpstreamClient()
    )
    directory.publish(_snapshot("users", 8001))
    file_snapshot = EndpointSet("users", (Endpoint("127.0.0.1", 8002),), "file", time.time())
    directory.publish(file_snapshot)
    cluster = registry.cluster("users")
    directory.withdraw("static", "users")  # the file still lists it: its endpoint stays
    assert [s.endpoint.port for s in cluster.states] == [8002]
    directory.withdraw("file", "users")
    assert cluster.states == [] and directory.get("users") is None
    directory.withdraw("file", "orders")  # never known: nothing to tell
    assert "orders" not in registry.clusters
