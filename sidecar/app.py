"""Composition root: builds listeners, layer stacks, discovery and admin from a Config.

Reads like the request path:
    outbound  = listener → prepare → server telemetry → route → per-upstream stack
    per-upstream stack = compose([concurrency limit, fallback, deadline, circuit breaker,
                                  retry, balance, client telemetry], terminal=forwarder.forward)
    inbound   = listener → prepare → server telemetry → deadline → client telemetry → local app
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.admin.server import AdminRoute, AdminServer, json_response
from sidecar.balance.base import Balancer
from sidecar.balance.cluster import Cluster
from sidecar.balance.factory import make_balancer
from sidecar.balance.view import endpoints_snapshot
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config, redacted, split_host_port
from sidecar.discovery.build import build_discovery
from sidecar.discovery.endpoints import Endpoint, EndpointSet
from sidecar.egress.connect import ConnectHandler
from sidecar.egress.dialer import EgressDialer
from sidecar.egress.discovery import EgressResolver
from sidecar.egress.dns import DnsCache, HostLookup
from sidecar.egress.forward import EgressForwarder
from sidecar.egress.policy import EgressPolicy
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.proxy.forward import Forwarder
from sidecar.proxy.prepare import RequestPreparer
from sidecar.proxy.routing import OutboundRouter
from sidecar.resilience.balance_layer import BalanceLayer
from sidecar.resilience.breaker import CircuitBreaker, CircuitBreakerLayer, breaker_for
from sidecar.resilience.concurrency import ConcurrencyLimitLayer
from sidecar.resilience.deadline import DeadlineLayer
from sidecar.resilience.fallback import FallbackLayer
from sidecar.resilience.health_check import HealthChecks
from sidecar.resilience.outlier import OutlierDetector
from sidecar.resilience.replay import ReplayBuffers
from sidecar.resilience.retry import RetryLayer
from sidecar.stack import Handler, Layer, compose
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.admin_routes import telemetry_routes
from sidecar.telemetry.layers import ClientTelemetryLayer, ServerTelemetryLayer
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.tracing import build_tracing
from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.client import UpstreamClient
from sidecar.transport.h2_client import H2Client
from sidecar.transport.h2_server import H2Connections, H2Handover, H2Limits, h2_handover
from sidecar.transport.server import ServerConnection, ServerLimits, ServerState
from sidecar.transport.tls import TlsOrigination, build_tls, default_tls
from sidecar.transport.tunnel import TunnelRegistry, refused_upgrade

log = logging.getLogger(__name__)


# Registered in Consul, a draining sidecar keeps accepting until no request has arrived for
# this long (bounded by drain_timeout): callers' sidecars see the maintenance flag within one
# blocking-query round trip, typically well under a second.
LATE_ARRIVAL_QUIET = 1.0


class ListenError(Exception):
    """A listener could not bind; message names the config field."""


@dataclass(frozen=True)
class Egress:
    policy: EgressPolicy
    dialer: EgressDialer
    resolver: EgressResolver
    connect: ConnectHandler


@dataclass
class _Listener:
    field_path: str
    address: str
    handler: Handler
    direction: str
    budget: ConnectionBudget
    server: asyncio.Server | None = field(default=None)


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
        self.metrics = Metrics(config.service.name, config.metrics.route_templates)
        self.tracing = build_tracing(
            config.tracing, config.service.name, on_spans_dropped=self.metrics.spans_dropped_count
        )
        self.access_log = AccessLog() if config.logging.access_log else None
        self.client_telemetry = ClientTelemetryLayer(tracing=self.tracing, metrics=self.metrics)
        self.client = UpstreamClient()
        self._tls: dict[str, TlsOrigination | None] = {}
        self.egress = self._build_egress(host_lookup)
        self.discovery = build_discovery(
            config,
            self.metrics,
            self.clock,
            config_dir,
            last=[self.egress.resolver] if self.egress is not None else [],
        )
        self.directory = self.discovery.directory
        self.lifecycle = self.discovery.lifecycle
        self._lifecycle_task: asyncio.Task[None] | None = None
        self.clusters: dict[str, Cluster] = {}
        self.health_checks = HealthChecks(self.clock, self.metrics)
        self.directory.subscribe(self._on_snapshot)
        self.metrics.admit_upstreams(self._is_known_upstream)
        self._stacks: dict[str, Handler] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.outliers: dict[str, OutlierDetector] = {}
        self.balancers: dict[str, Balancer] = {}
        # Request bodies held for retries, by all upstreams together.
        self.replay_buffers = ReplayBuffers(config.limits.retry_buffer_bytes)
        limits = config.limits
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
        self.preparer = RequestPreparer(config.trusted_proxies)
        self.state.allow_connect = self.egress is not None
        self.router = OutboundRouter(
            self.directory,
            self._stack_for,
            self._is_configured,
            upgrades_for=self._upgrades_for,
            connect=self.egress.connect if self.egress is not None else None,
        )
        self.h2_connections = H2Connections(
            H2Limits(
                max_concurrent_streams=limits.h2_max_concurrent_streams,
                max_header_bytes=limits.max_header_bytes,
                max_body_bytes=limits.max_body_bytes,
            ),
            self.state,
        )
        self.h2_client = H2Client()
        self.outbound: Handler = compose([self._server_telemetry("outbound")], terminal=self.router)
        default = config.policy(config.service.name)
        t = default.timeouts
        self._local = Forwarder(
            self.client,
            t.connect,
            t.idle,
            t.stream_idle,
            h2=self.h2_client,
            protocol=default.protocol,
        )
        self._local_endpoint = Endpoint(config.service.address, config.service.port)
        self.inbound: Handler = compose(
            [
                self._server_telemetry("inbound"),
                DeadlineLayer(default.timeouts.total, self.clock, self.metrics),
                ClientTelemetryLayer(
                    tracing=self.tracing,
                    metrics=self.metrics,
                    direction="inbound",
                    default_upstream=config.service.name,
                ),
            ],
            terminal=self._to_local_app,
        )
        self.admin = AdminServer(
            self._admin_routes(), self.readiness, expose_debug=config.admin.expose_debug
        )
        self._listeners = self._plan_listeners()
        self._started = False

    # ------------------------------------------------------------ stacks
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
            or (self.egress is not None and self.egress.policy.allows(name))
        )

    def _cluster(self, name: str) -> Cluster:
        cluster = self.clusters.get(name)
        if cluster is None:
            cluster = Cluster(name)
            snap = self.directory.get(name)
            if snap is not None:
                cluster.update(snap)
            self.clusters[name] = cluster
        return cluster

    def _on_snapshot(self, snapshot: EndpointSet) -> None:
        cluster = self._cluster(snapshot.upstream)
        cluster.update(snapshot)
        self.health_checks.update(cluster, self.config.policy(snapshot.upstream).health_check)
        self.client.retain(snapshot.upstream, set(snapshot.endpoints))
        now = self.clock.monotonic()
        ejected = sum(1 for s in cluster.states if s.is_ejected(now))
        self.metrics.endpoints(snapshot.upstream, len(cluster.states) - ejected, ejected)
        self.metrics.discovery_update(snapshot.upstream, snapshot.source, snapshot.updated_at)

    def _stack_for(self, name: str) -> Handler:
        stack = self._stacks.get(name)
        if stack is None:
            stack = self._build_upstream_stack(name)
            self._stacks[name] = stack
        return stack

    def _build_upstream_stack(self, name: str) -> Handler:
        """One upstream's filter chain, built once from its policy (rebuilt after a reload)."""
        p, clock, obs = self.config.policy(name), self.clock, self.metrics
        cluster = self._cluster(name)
        breaker = breaker_for(name, p.circuit_breaker, clock, obs)
        self.breakers[name] = breaker
        outlier = OutlierDetector(p.outlier_detection, cluster, obs)
        self.outliers[name] = outlier
        egress = self._egress_dialer(name)
        forwarder = Forwarder(
            self.client,
            p.timeouts.connect,
            p.timeouts.idle,
            p.timeouts.stream_idle,
            tls=self._tls_for(name),
            dialer=egress,
            h2=self.h2_client,
            protocol=p.protocol,
        )
        terminal = forwarder.forward if egress is None else EgressForwarder(forwarder).forward
        balancer = make_balancer(p.load_balancer, clock)
        self.balancers[name] = balancer
        layers: list[Layer] = [
            ConcurrencyLimitLayer(name, p.max_concurrent_requests, obs),
            FallbackLayer(name, p.fallback, clock, obs),
            DeadlineLayer(p.timeouts.total, clock, obs),
            CircuitBreakerLayer(name, breaker, obs),
            RetryLayer(
                name,
                p.retries,
                p.timeouts.per_try,
                self.config.limits.retry_buffer_bytes,
                clock,
                obs,
                replay_buffers=self.replay_buffers,
            ),
            BalanceLayer(cluster, balancer, clock, outlier, obs, p.timeouts.per_try),
            self.client_telemetry,
        ]
        for layer in layers:
            if isinstance(layer, RetryLayer):
                # Re-sending on a fresh connection after a stale pooled one is a retry too.
                forwarder.budget = layer.budget
        return compose(layers, terminal=terminal)

    def _build_egress(self, host_lookup: HostLookup | None) -> Egress | None:
        cfg = self.config.egress
        if cfg is None:
            return None
        policy = EgressPolicy(cfg)
        dialer = EgressDialer(policy, DnsCache(host_lookup, self.clock))

        def timeouts_for(name: str) -> tuple[float, float]:
            t = self.config.policy(name).timeouts
            return t.connect, t.stream_idle

        return Egress(
            policy=policy,
            dialer=dialer,
            resolver=EgressResolver(policy, lambda n: 443 if self._tls_for(n) else 80),
            connect=ConnectHandler(policy, dialer, timeouts_for, self.metrics),
        )

    def _egress_dialer(self, name: str) -> EgressDialer | None:
        """The dialer for an upstream that is an egress name (resolved by no other source)."""
        snap = self.directory.get(name)
        if self.egress is None or snap is None or snap.source != EgressResolver.source:
            return None
        return self.egress.dialer

    def _tls_for(self, name: str) -> TlsOrigination | None:
        """The upstream's TLS origination, built once per policy (reload clears these)."""
        if name not in self._tls:
            self._tls[name] = build_tls(self.config.policy(name).tls)
        return self._tls[name]

    def _tls_state(self, name: str, endpoint: Endpoint) -> dict[str, object] | bool:
        tls = self._tls_for(name)
        if tls is None and endpoint.tls:
            tls = default_tls()
        return tls.describe() if tls is not None else False

    def _upgrades_for(self, name: str) -> list[str]:
        return self.config.policy(name).upgrades

    async def _to_local_app(self, request: Request) -> Response:
        request.upstream = self.config.service.name
        if request.upgrade:
            name = request.upstream
            refused = refused_upgrade(request.upgrade, self._upgrades_for(name), name)
            if refused is not None:
                raise refused
        request.endpoint = self._local_endpoint
        return await self._local.forward(request)

    def _fixed_port_handler(self, name: str) -> Handler:
        outbound = self.outbound

        async def handle(request: Request) -> Response:
            request.upstream = name
            request.authority = name
            return await outbound(request)

        return handle

    # ------------------------------------------------------------ admin
    def _admin_routes(self) -> list[AdminRoute]:

        async def config_view(request: Request) -> Response:
            return json_response(redacted(self.config))

        async def endpoints_view(request: Request) -> Response:
            now = self.clock.monotonic()
            return json_response(
                {
                    name: [
                        {**row, "tls": self._tls_state(name, st.endpoint)}
                        for row, st in zip(
                            endpoints_snapshot(cluster, self.balancers.get(name), now),
                            cluster.states,
                            strict=True,
                        )
                    ]
                    for name, cluster in sorted(self.clusters.items())
                }
            )

        async def breakers_view(request: Request) -> Response:
            return json_response({n: b.snapshot() for n, b in sorted(self.breakers.items())})

        routes: list[AdminRoute] = [
            ("GET", "/admin/config", config_view),
            ("GET", "/admin/endpoints", endpoints_view),
            ("GET", "/admin/breakers", breakers_view),
        ]
        metrics = self.metrics if self.config.metrics.enabled else None
        return routes + telemetry_routes(metrics, self.tracing.buffer)

    async def readiness(self) -> list[str]:
        reasons = []
        if self.state.draining:
            reasons.append("draining")
        elif not self._started:
            reasons.append("listeners not started")
        else:
            reasons.extend(self.lifecycle.ready_reasons())
        try:
            probe = Request(
                method="GET",
                target=self.config.service.health_path,
                headers=Headers.from_lower([("host", self.config.service.name)]),
                body=BytesBody(b""),
                upstream=self.config.service.name,
                endpoint=self._local_endpoint,
            )
            async with asyncio.timeout(2.0):
                resp = await self._local.forward(probe)
                async for _ in resp.body:
                    pass
            if resp.status >= 300:
                reasons.append(f"local app health check returned {resp.status}")
        except Exception as exc:
            reasons.append(f"local app not healthy: {exc}")
        return reasons

    # ------------------------------------------------------------ lifecycle
    def _plan_listeners(self) -> list[_Listener]:
        cfg = self.config
        most = cfg.limits.max_connections
        inbound_budget = ConnectionBudget(cfg.listeners.inbound_max_connections or most)
        outbound_budget = ConnectionBudget(cfg.listeners.outbound_max_connections or most)
        listeners = [
            _Listener(
                "listeners.inbound", cfg.listeners.inbound, self.inbound, "inbound", inbound_budget
            ),
            _Listener(
                "listeners.outbound",
                cfg.listeners.outbound,
                self.outbound,
                "outbound",
                outbound_budget,
            ),
        ]
        for name, up in cfg.upstreams.items():
            if up.listen and name != "default":
                listeners.append(
                    _Listener(
                        f"upstreams.{name}.listen",
                        up.listen,
                        self._fixed_port_handler(name),
                        "outbound",
                        ConnectionBudget(most),
                    )
                )
        return listeners

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for lst in self._listeners:
                host, port = split_host_port(lst.address)
                handler, direction, budget = lst.handler, lst.direction, lst.budget
                h2 = h2_handover(handler, self.h2_connections, direction, self.preparer)

                def factory(
                    h: Handler = handler,
                    d: str = direction,
                    h2: H2Handover = h2,
                    b: ConnectionBudget = budget,
                ) -> ServerConnection:
                    return ServerConnection(h, self.state, d, self.preparer, h2, budget=b)

                lst.server = await self._bind(loop, factory, host, port, lst)
            host, port = split_host_port(self.config.listeners.admin)
            try:
                await self.admin.start(host, port)
            except OSError as exc:
                raise ListenError(
                    f"cannot listen on {self.config.listeners.admin} (listeners.admin): "
                    f"{exc.strerror or exc}"
                ) from None
        except BaseException:
            await self._close_listeners()
            raise
        if self.access_log is not None:
            self.access_log.start()
        self.directory.start()
        self.health_checks.start()
        self._started = True
        # In the background: waiting for Consul must not delay serving static/file endpoints
        # nor the signal handlers; /readyz tells where it stands.
        self._lifecycle_task = asyncio.create_task(self.lifecycle.start(), name="lifecycle")

    async def _bind(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], ServerConnection],
        host: str,
        port: int,
        lst: _Listener,
    ) -> asyncio.Server:
        try:
            return await loop.create_server(
                factory,
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {lst.address} ({lst.field_path}): {exc.strerror or exc}"
            ) from None

    def bound_port(self, field_path: str) -> int:
        """Actual port of a listener (useful when configured with port 0)."""
        for lst in self._listeners:
            if lst.field_path == field_path and lst.server is not None:
                sock = lst.server.sockets[0]
                return int(sock.getsockname()[1])
        raise KeyError(field_path)

    async def _close_listeners(self) -> None:
        # Not awaiting wait_closed(): it waits for every client connection, which drain owns.
        for lst in self._listeners:
            if lst.server is not None:
                lst.server.close()
                lst.server = None

    async def drain(self, timeout: float | None = None) -> bool:
        """Shut down gracefully (docs/discovery.md): Consul maintenance on → serve in-flight (and,
        when registered, late-arriving) requests, bounded by `timeout` → deregister.
        True if every request finished."""
        budget = self.config.limits.drain_timeout if timeout is None else timeout
        result = False

        async def drain_listeners() -> None:
            nonlocal result
            result = await self._drain(budget)

        if self._lifecycle_task is not None and not self._lifecycle_task.done():
            self._lifecycle_task.cancel()
            await asyncio.gather(self._lifecycle_task, return_exceptions=True)
        await self.lifecycle.shutdown(drain=drain_listeners)
        return result

    async def _drain(self, budget: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        self._started = False
        # Responses now say `Connection: close`, so keep-alive callers reconnect elsewhere.
        self.state.draining = True
        if self.discovery.registration is not None and self.discovery.registration.registered:
            # Callers learn of the maintenance through their own blocking queries; until they
            # do, requests keep arriving. Serve them until traffic has been quiet for a moment.
            await self.state.wait_quiet(LATE_ARRIVAL_QUIET, deadline)
        for lst in self._listeners:
            if lst.server is not None:
                lst.server.close()
        self.state.start_drain()
        self.h2_connections.start_drain()
        ok = await self.state.wait_idle(max(0.0, deadline - loop.time()))
        if not ok:
            log.warning("drain timeout: %d requests still in flight", self.state.active_requests)
        return ok

    async def stop(self) -> None:
        await self._close_listeners()
        for conn in list(self.state.connections):
            conn.close_if_idle()
        closed = self.state.tunnels.close_all()
        if closed:
            log.info("closed %d open tunnels", closed)
        await self.health_checks.stop()
        await self.discovery.close()
        await self.admin.stop()
        self.client.close()
        self.h2_connections.close()
        self.h2_client.close()
        # Flushing spans and the access log blocks on I/O: keep it off the event loop.
        await asyncio.to_thread(self.tracing.shutdown)
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)

    # ------------------------------------------------------------ reload
    def reload(self, config: Config) -> None:
        """Swap policies and static endpoints; open connections stay. Listener addresses
        are bound at start and need a restart to change."""
        if config.listen_addresses() != self.config.listen_addresses():
            log.warning("listener addresses changed in the new config: restart to apply them")
        if config.egress != self.config.egress:
            log.warning("egress changed in the new config: restart to apply it")
        if config.discovery.file != self.config.discovery.file or (
            config.discovery.consul != self.config.discovery.consul
        ):
            log.warning("discovery.file / discovery.consul changed: restart to apply them")
        self.config = config
        self._configured = frozenset(config.configured_upstreams())
        self.preparer.trust(config.trusted_proxies)
        self.discovery.reload(config)
        for name, cluster in self.clusters.items():
            self.health_checks.update(cluster, config.policy(name).health_check)
        self._stacks.clear()
        self._tls.clear()
        log.info("configuration reloaded")
