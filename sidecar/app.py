"""Composition root: builds everything a sidecar runs from a Config, and lists the request
path of each direction once, in order (`_outbound_path`, `_upstream_path`, `_inbound_path`):

    outbound: listener → prepare → server telemetry → route →
              concurrency → fallback → deadline → breaker → retry → balance →
              client telemetry → forward
    inbound:  listener → prepare → server telemetry → deadline → client telemetry → local app

(`prepare` runs in the transport for every request before the first stage, see
`ServerConnection`; `route` picks the upstream and its path, built per upstream on first use.)
Nearly every stage is a filter (synchronous hooks before and after the call) and one `Chain`
coroutine runs a request through all of them, the router's attempts in one more; see
sidecar/stack.py.

The rest lives by job: per-upstream state in sidecar/registry.py, the /admin/* views in
sidecar/admin/views.py, binding/readiness/drain/stop/signals in sidecar/runtime.py.
docs/architecture.md maps each stage to its module.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sidecar.admin.server import AdminServer
from sidecar.admin.views import admin_routes
from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config
from sidecar.discovery.build import build_discovery
from sidecar.egress.build import Egress
from sidecar.egress.dialer import EgressDialer
from sidecar.egress.discovery import EgressResolver
from sidecar.egress.dns import DnsCache, HostLookup
from sidecar.egress.forward import EgressForwarder
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.proxy.forward import Forwarder
from sidecar.proxy.local import ToLocalApp
from sidecar.proxy.prepare import RequestPreparer
from sidecar.proxy.routing import OutboundRouter, PinnedUpstream
from sidecar.registry import UpstreamRegistry
from sidecar.resilience.balance_layer import BalanceLayer
from sidecar.resilience.breaker import CircuitBreaker, CircuitBreakerLayer
from sidecar.resilience.concurrency import ConcurrencyLimitLayer
from sidecar.resilience.deadline import DeadlineLayer
from sidecar.resilience.fallback import FallbackLayer
from sidecar.resilience.health_check import HealthChecks
from sidecar.resilience.outlier import OutlierDetector
from sidecar.resilience.replay import ReplayBuffers
from sidecar.resilience.retry import RetryLayer
from sidecar.runtime import Listener, ListenError, Runtime, Services, restart_needed
from sidecar.stack import Handler, Router, compose
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.layers import ClientTelemetryLayer, ServerTelemetryLayer
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.tracing import build_tracing
from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.client import UpstreamClient
from sidecar.transport.h2_lazy import LazyH2Client, LazyH2Connections
from sidecar.transport.server import ServerLimits, ServerState
from sidecar.transport.tunnel import TunnelRegistry
from sidecar.vocab.endpoint import Endpoint

__all__ = ["Egress", "ListenError", "Sidecar"]

log = logging.getLogger(__name__)


class Sidecar:
    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        config_dir: Path | None = None,
        host_lookup: HostLookup | None = None,
    ) -> None:
        self.config = config
        # Routable names from the config, computed once (and on reload), not per request.
        self._configured = frozenset(config.configured_upstreams())
        self.clock = clock or SystemClock()
        limits = config.limits

        # ---- shared services: telemetry, connection pools, discovery
        self.metrics = Metrics(config.service.name, config.metrics.route_templates)
        self.tracing = build_tracing(
            config.tracing, config.service.name, on_spans_dropped=self.metrics.spans_dropped_count
        )
        self.access_log = AccessLog() if config.logging.access_log else None
        self.client_telemetry = ClientTelemetryLayer(tracing=self.tracing, metrics=self.metrics)
        self.client = UpstreamClient()
        self.h2_client = LazyH2Client()
        self.egress = self._build_egress(host_lookup)
        self.discovery = build_discovery(
            config,
            self.metrics,
            self.clock,
            config_dir,
            last=[self.egress.resolver],
        )
        self.directory = self.discovery.directory
        self.lifecycle = self.discovery.lifecycle
        self.upstreams = UpstreamRegistry(
            config, self.clock, self.metrics, self.directory, self.client
        )
        self.upstreams.build = self._upstream_path
        self.metrics.admit_upstreams(self._is_known_upstream)
        # Request bodies held for retries, by all upstreams together.
        self.replay_buffers = ReplayBuffers(limits.retry_buffer_bytes)

        # ---- connection-level state shared by every listener
        self.state = ServerState(
            ServerLimits(
                max_header_bytes=limits.max_header_bytes,
                max_body_bytes=limits.max_body_bytes,
                header_read_timeout=limits.header_read_timeout,
                max_connections=limits.max_connections,
                # Keep-alive idle and write-side idle (a client that reads nothing).
                idle_timeout=config.policy(config.service.name).timeouts.idle,
            ),
            TunnelRegistry(self.metrics),
        )
        self.state.allow_connect = self.egress.enabled
        # The HTTP/2 stack is imported by the first HTTP/2 connection or upstream call.
        self.h2_connections = LazyH2Connections(
            self.state,
            max_concurrent_streams=limits.h2_max_concurrent_streams,
            max_header_bytes=limits.max_header_bytes,
            max_body_bytes=limits.max_body_bytes,
        )
        # Stage 0 of both directions, run by the transport on every request (HTTP/1.1 and
        # HTTP/2 alike) before the handler: request id, forwarded headers, hygiene.
        self.preparer = RequestPreparer(config.trusted_proxies)

        # ---- the request paths
        self.router = OutboundRouter(
            self.directory,
            self.upstreams.stack_for,
            self._is_configured,
            upgrades_for=self._upgrades_for,
            connect=self.egress.connect,
        )
        self.outbound = self._outbound_path()
        default = config.policy(config.service.name)
        self._local = Forwarder(
            self.client,
            default.timeouts.connect,
            default.timeouts.idle,
            default.timeouts.stream_idle,
            h2=self.h2_client,
            protocol=default.protocol,
        )
        self._local_endpoint = Endpoint(config.service.address, config.service.port)
        self.inbound = self._inbound_path()

        # ---- admin and runtime
        self.admin = AdminServer(
            admin_routes(lambda: self.config, self.upstreams, self.metrics, self.tracing.buffer),
            self.readiness,
            expose_debug=config.admin.expose_debug,
        )
        self.runtime = Runtime(
            lambda: self.config,
            self._plan_listeners(),
            Services(
                state=self.state,
                preparer=self.preparer,
                h2_connections=self.h2_connections,
                admin=self.admin,
                discovery=self.discovery,
                health_checks=self.upstreams.health_checks,
                client=self.client,
                h2_client=self.h2_client,
                tracing=self.tracing,
                access_log=self.access_log,
            ),
            self._probe_local_app,
        )

    # ================================================================ the request path
    def _outbound_path(self) -> Handler:
        """prepare (transport) → server telemetry → route → the upstream's path (the route
        hands the request on: the upstream's stages run in the same chain)."""
        return compose([self._server_telemetry("outbound")], terminal=self.router)

    def _upstream_path(self, name: str) -> Handler:
        """One upstream's stages, built on its first request from its policy (again after a
        reload). The router's filters (per-try timeout, balance, client telemetry) run per
        attempt, as many attempts as retry decides."""
        p, clock, obs = self.config.policy(name), self.clock, self.metrics
        parts = self.upstreams.parts(name)
        egress = self._egress_dialer(name)
        forwarder = Forwarder(
            self.client,
            p.timeouts.connect,
            p.timeouts.idle,
            p.timeouts.stream_idle,
            tls=parts.tls,
            dialer=egress,
            h2=self.h2_client,
            protocol=p.protocol,
        )
        retry = RetryLayer(
            name,
            p.retries,
            p.timeouts.per_try,
            self.config.limits.retry_buffer_bytes,
            clock,
            obs,
            replay_buffers=self.replay_buffers,
        )
        # Re-sending on a fresh connection after a stale pooled one is a retry too.
        forwarder.budget = retry.budget
        return compose(
            [
                ConcurrencyLimitLayer(name, p.max_concurrent_requests, obs),
                FallbackLayer(name, p.fallback, clock, obs),
                # stamp=False: each of the router's attempts stamps the budget left;
                # lazy: its timer is left to the router's per-try timer (one per request).
                DeadlineLayer(p.timeouts.total, clock, obs, stamp=False, lazy=True),
                CircuitBreakerLayer(name, parts.breaker, obs),
            ],
            # the router: attempts, as many as `retry` decides, each through these filters
            terminal=Router(
                retry,
                [
                    retry.per_try,
                    BalanceLayer(
                        parts.cluster, parts.balancer, clock, parts.outlier, obs, p.timeouts.per_try
                    ),
                    self.client_telemetry,
                ],
                send=forwarder.forward if egress is None else EgressForwarder(forwarder).forward,
            ),
        )

    def _inbound_path(self) -> Handler:
        """prepare (transport) → server telemetry → deadline → client telemetry → local app."""
        cfg = self.config
        name = cfg.service.name
        return compose(
            [
                self._server_telemetry("inbound"),
                DeadlineLayer(cfg.policy(name).timeouts.total, self.clock, self.metrics),
                ClientTelemetryLayer(
                    tracing=self.tracing,
                    metrics=self.metrics,
                    direction="inbound",
                    default_upstream=name,
                ),
                ToLocalApp(name, self._local_endpoint, self._upgrades_for),
            ],
            terminal=self._local.forward,
        )

    def _plan_listeners(self) -> list[Listener]:
        """Which path serves which address: inbound, outbound, and an outbound path pinned to
        one upstream per `upstreams.<name>.listen`."""
        cfg = self.config
        most = cfg.limits.max_connections
        listeners = [
            Listener(
                "listeners.inbound",
                cfg.listeners.inbound,
                self.inbound,
                "inbound",
                ConnectionBudget(cfg.listeners.inbound_max_connections or most),
            ),
            Listener(
                "listeners.outbound",
                cfg.listeners.outbound,
                self.outbound,
                "outbound",
                ConnectionBudget(cfg.listeners.outbound_max_connections or most),
            ),
        ]
        for name, up in cfg.upstreams.items():
            if up.listen and name != "default":
                listeners.append(
                    Listener(
                        f"upstreams.{name}.listen",
                        up.listen,
                        self._fixed_port_handler(name),
                        "outbound",
                        ConnectionBudget(most),
                    )
                )
        return listeners

    # ---------------------------------------------------------------- stage helpers
    def _server_telemetry(self, direction: str) -> ServerTelemetryLayer:
        return ServerTelemetryLayer(
            direction,
            tracing=self.tracing,
            metrics=self.metrics,
            access_log=self.access_log,
            server_address=self.config.service.name,
        )

    def _is_configured(self, name: str) -> bool:
        return name in self._configured

    def _is_known_upstream(self, name: str) -> bool:
        """May be an `upstream` metric label: configured, discovered, or this service."""
        return (
            name in self._configured
            or name == self.config.service.name
            or self.directory.get(name) is not None
            or self.egress.policy.allows(name)
        )

    def _build_egress(self, host_lookup: HostLookup | None) -> Egress:
        """Built even without an `egress` section (allowing nothing), so reload can turn it on."""

        def timeouts_for(name: str) -> tuple[float, float]:
            t = self.config.policy(name).timeouts
            return t.connect, t.stream_idle

        return Egress(
            self.config.egress,
            DnsCache(host_lookup, self.clock),
            lambda n: 443 if self.upstreams.tls_for(n) else 80,
            timeouts_for,
            self.metrics,
        )

    def _egress_dialer(self, name: str) -> EgressDialer | None:
        """The dialer for an upstream that is an egress name (resolved by no other source)."""
        snap = self.directory.get(name)
        if snap is None or snap.source != EgressResolver.source:
            return None
        return self.egress.dialer

    def _upgrades_for(self, name: str) -> list[str]:
        return self.config.policy(name).upgrades

    def _fixed_port_handler(self, name: str) -> Handler:
        return compose([PinnedUpstream(name)], self.outbound)

    async def _probe_local_app(self) -> Response:
        return await self._local.forward(
            Request(
                method="GET",
                target=self.config.service.health_path,
                headers=Headers.from_lower([("host", self.config.service.name)]),
                body=BytesBody(b""),
                upstream=self.config.service.name,
                endpoint=self._local_endpoint,
            )
        )

    # ================================================================ running it
    async def start(self) -> None:
        await self.runtime.start()

    async def readiness(self) -> list[str]:
        return await self.runtime.readiness()

    def bound_port(self, field_path: str) -> int:
        """Actual port of a listener (useful when configured with port 0)."""
        return self.runtime.bound_port(field_path)

    async def drain(self, timeout: float | None = None) -> bool:
        """Serve what is in flight and stop accepting (see Runtime.drain); True if every
        request finished within `timeout` (default `limits.drain_timeout`)."""
        return await self.runtime.drain(timeout)

    async def stop(self) -> None:
        await self.runtime.stop()

    def reload(self, config: Config) -> None:
        """Swap policies, static endpoints and egress; open connections stay. Listener
        addresses and discovery sources are bound at start and need a restart to change."""
        for warning in restart_needed(self.config, config):
            log.warning("%s", warning)
        self.config = config
        self._configured = frozenset(config.configured_upstreams())
        self.preparer.trust(config.trusted_proxies)
        self.discovery.reload(config)
        for name in self.egress.reload(config.egress):
            self.directory.withdraw(EgressResolver.source, name)
        self.state.allow_connect = self.egress.enabled
        self.upstreams.reload(config)
        log.info("configuration reloaded")

    # ---------------------------------------------------------------- registry views
    @property
    def clusters(self) -> dict[str, Cluster]:
        return self.upstreams.clusters

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return self.upstreams.breakers

    @property
    def outliers(self) -> dict[str, OutlierDetector]:
        return self.upstreams.outliers

    @property
    def balancers(self) -> dict[str, Balancer]:
        return self.upstreams.balancers

    @property
    def health_checks(self) -> HealthChecks:
        return self.upstreams.health_checks
