"""Per-upstream state: clusters, balancers, breakers, outlier detectors, health checks, TLS
origination and the built request path of each upstream.

What a request to an upstream needs is built on its first request (`stack_for`) from the
upstream's policy and kept until a reload, which drops the built paths so the next request
rebuilds them from the new policy. Clusters outlive reloads: their endpoints come from
discovery snapshots (`on_snapshot`), not from the policy. Which stages a path has, and in
which order, is the composition root's business (sidecar/app.py): it passes `build`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster
from sidecar.balance.factory import make_balancer
from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Directory
from sidecar.resilience.breaker import CircuitBreaker, breaker_for
from sidecar.resilience.health_check import HealthChecks
from sidecar.resilience.outlier import OutlierDetector
from sidecar.stack import Handler
from sidecar.telemetry.metrics import Metrics
from sidecar.transport.client import UpstreamClient
from sidecar.transport.tls import TlsOrigination, build_tls, endpoint_tls
from sidecar.vocab.endpoint import Endpoint


@dataclass(frozen=True)
class UpstreamParts:
    """The stateful pieces of one upstream's path, registered so admin views can show them."""

    cluster: Cluster
    balancer: Balancer
    breaker: CircuitBreaker
    outlier: OutlierDetector
    tls: TlsOrigination | None


class UpstreamRegistry:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        metrics: Metrics,
        directory: Directory,
        client: UpstreamClient,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.directory = directory
        self.client = client
        self.clusters: dict[str, Cluster] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.outliers: dict[str, OutlierDetector] = {}
        self.balancers: dict[str, Balancer] = {}
        self.health_checks = HealthChecks(
            clock, metrics, tls_for=self.tls_for, protocol_for=self._protocol_for
        )
        self._stacks: dict[str, Handler] = {}
        self._tls: dict[str, TlsOrigination | None] = {}
        # Set by the composition root before the first request.
        self.build: Callable[[str], Handler] | None = None
        directory.subscribe(self.on_snapshot)
        directory.subscribe_gone(self.on_gone)

    def stack_for(self, name: str) -> Handler:
        stack = self._stacks.get(name)
        if stack is None:
            assert self.build is not None, "the composition root sets UpstreamRegistry.build"
            stack = self.build(name)
            self._stacks[name] = stack
        return stack

    def parts(self, name: str) -> UpstreamParts:
        """Fresh stateful pieces for `name` from its current policy (a breaker, detector and
        balancer per built path; the cluster is shared and kept)."""
        p = self.config.policy(name)
        cluster = self.cluster(name)
        breaker = breaker_for(name, p.circuit_breaker, self.clock, self.metrics)
        outlier = OutlierDetector(p.outlier_detection, cluster, self.metrics)
        balancer = make_balancer(p.load_balancer, self.clock)
        self.breakers[name] = breaker
        self.outliers[name] = outlier
        self.balancers[name] = balancer
        return UpstreamParts(cluster, balancer, breaker, outlier, self.tls_for(name))

    def cluster(self, name: str) -> Cluster:
        cluster = self.clusters.get(name)
        if cluster is None:
            cluster = Cluster(name)
            snap = self.directory.get(name)
            if snap is not None:
                cluster.update(snap)
            self.clusters[name] = cluster
        return cluster

    def on_snapshot(self, snapshot: EndpointSet) -> None:
        cluster = self.cluster(snapshot.upstream)
        cluster.update(snapshot)
        self.health_checks.update(cluster, self.config.policy(snapshot.upstream).health_check)
        self.client.retain(snapshot.upstream, set(snapshot.endpoints))
        now = self.clock.monotonic()
        ejected = sum(1 for s in cluster.states if s.is_ejected(now))
        self.metrics.endpoints(snapshot.upstream, len(cluster.states) - ejected, ejected)
        self.metrics.discovery_update(snapshot.upstream, snapshot.source, snapshot.updated_at)

    def on_gone(self, source: str, name: str) -> None:
        """No source lists `name` any more (removed from `discovery.static` or the endpoint
        file, an egress name no longer allowed, a Consul watch stopped): its cluster is
        emptied, so nothing is picked for it, even on a path its `upstreams.<name>` policy
        keeps routable. Requests in flight keep their connections."""
        cluster = self.clusters.get(name)
        if cluster is not None:
            cluster.update(EndpointSet(name, (), source, time.time()))
            self.metrics.endpoints(name, 0, 0)

    def tls_for(self, name: str) -> TlsOrigination | None:
        """The upstream's TLS origination, built once per policy (reload clears these)."""
        if name not in self._tls:
            self._tls[name] = build_tls(self.config.policy(name).tls)
        return self._tls[name]

    def _protocol_for(self, name: str) -> str:
        return self.config.policy(name).protocol

    def tls_state(self, name: str, endpoint: Endpoint) -> dict[str, object] | bool:
        tls = endpoint_tls(self.tls_for(name), endpoint)
        return tls.describe() if tls is not None else False

    def reload(self, config: Config) -> None:
        """Take the new policies: health checks now, built paths and TLS on next use."""
        self.config = config
        self._stacks.clear()
        self._tls.clear()  # rebuilt from the new policy (and certificate files) on next use
        for name, cluster in self.clusters.items():
            self.health_checks.update(cluster, config.policy(name).health_check)
