"""Running a built sidecar: binding its listeners, readiness, drain, stop, and the process
signals (SIGTERM/SIGINT stop, SIGHUP reloads). What listens where and with which request path
is decided by the composition root (sidecar/app.py); this module only runs it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.admin.server import AdminServer
from sidecar.config import Config, split_host_port
from sidecar.discovery.build import Discovery
from sidecar.http import Response
from sidecar.proxy.prepare import RequestPreparer
from sidecar.resilience.health_check import HealthChecks
from sidecar.stack import Handler
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.tracing import Tracing
from sidecar.transport.budget import ConnectionBudget
from sidecar.transport.client import UpstreamClient
from sidecar.transport.h2_lazy import H2Handover, LazyH2Client, LazyH2Connections, lazy_handover
from sidecar.transport.server import ServerConnection, ServerState

log = logging.getLogger(__name__)

# Registered in Consul, a draining sidecar keeps accepting until no request has arrived for
# this long (bounded by drain_timeout): callers' sidecars see the maintenance flag within one
# blocking-query round trip, typically well under a second.
LATE_ARRIVAL_QUIET = 1.0

# The local app answers its health path within this, or the sidecar is not ready.
LOCAL_PROBE_TIMEOUT = 2.0


class ListenError(Exception):
    """A listener could not bind; message names the config field."""


@dataclass
class Listener:
    field_path: str
    address: str
    handler: Handler
    direction: str
    budget: ConnectionBudget
    server: asyncio.Server | None = field(default=None)


@dataclass(frozen=True)
class Services:
    """What the runtime starts, drains and stops besides the listeners."""

    state: ServerState
    preparer: RequestPreparer
    h2_connections: LazyH2Connections
    admin: AdminServer
    discovery: Discovery
    health_checks: HealthChecks
    client: UpstreamClient
    h2_client: LazyH2Client
    tracing: Tracing
    access_log: AccessLog | None


class Runtime:
    def __init__(
        self,
        config: Callable[[], Config],
        listeners: list[Listener],
        services: Services,
        probe_local_app: Callable[[], Awaitable[Response]],
    ) -> None:
        self._config = config
        self.listeners = listeners
        self.services = services
        self._probe_local_app = probe_local_app
        self._lifecycle_task: asyncio.Task[None] | None = None
        self.started = False

    # ------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.services
        loop = asyncio.get_running_loop()
        try:
            for lst in self.listeners:
                host, port = split_host_port(lst.address)
                handler, direction, budget = lst.handler, lst.direction, lst.budget
                h2 = lazy_handover(handler, s.h2_connections, direction, s.preparer)

                def factory(
                    h: Handler = handler,
                    d: str = direction,
                    h2: H2Handover = h2,
                    b: ConnectionBudget = budget,
                ) -> ServerConnection:
                    return ServerConnection(h, s.state, d, s.preparer, h2, budget=b)

                lst.server = await self._bind(loop, factory, host, port, lst)
            admin_address = self._config().listeners.admin
            host, port = split_host_port(admin_address)
            try:
                await s.admin.start(host, port)
            except OSError as exc:
                raise ListenError(
                    f"cannot listen on {admin_address} (listeners.admin): {exc.strerror or exc}"
                ) from None
        except BaseException:
            self._close_listeners()
            raise
        if s.access_log is not None:
            s.access_log.start()
        s.discovery.directory.start()
        s.health_checks.start()
        self.started = True
        # In the background: waiting for Consul must not delay serving static/file endpoints
        # nor the signal handlers; /readyz tells where it stands.
        self._lifecycle_task = asyncio.create_task(s.discovery.lifecycle.start(), name="lifecycle")

    async def _bind(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], ServerConnection],
        host: str,
        port: int,
        lst: Listener,
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
        for lst in self.listeners:
            if lst.field_path == field_path and lst.server is not None:
                sock = lst.server.sockets[0]
                return int(sock.getsockname()[1])
        raise KeyError(field_path)

    def _close_listeners(self) -> None:
        # Not awaiting wait_closed(): it waits for every client connection, which drain owns.
        for lst in self.listeners:
            if lst.server is not None:
                lst.server.close()
                lst.server = None

    # ------------------------------------------------------------ readiness
    async def readiness(self) -> list[str]:
        reasons = []
        if self.services.state.draining:
            reasons.append("draining")
        elif not self.started:
            reasons.append("listeners not started")
        else:
            reasons.extend(self.services.discovery.lifecycle.ready_reasons())
        try:
            async with asyncio.timeout(LOCAL_PROBE_TIMEOUT):
                resp = await self._probe_local_app()
                async for _ in resp.body:
                    pass
            if resp.status >= 300:
                reasons.append(f"local app health check returned {resp.status}")
        except Exception as exc:
            reasons.append(f"local app not healthy: {exc}")
        return reasons

    # ------------------------------------------------------------ drain and stop
    async def drain(self, timeout: float | None = None) -> bool:
        """Shut down gracefully (docs/discovery.md): Consul maintenance on → serve in-flight (and,
        when registered, late-arriving) requests, bounded by `timeout` → deregister.
        True if every request finished."""
        budget = self._config().limits.drain_timeout if timeout is None else timeout
        result = False

        async def drain_listeners() -> None:
            nonlocal result
            result = await self._drain(budget)

        if self._lifecycle_task is not None and not self._lifecycle_task.done():
            self._lifecycle_task.cancel()
            await asyncio.gather(self._lifecycle_task, return_exceptions=True)
        await self.services.discovery.lifecycle.shutdown(drain=drain_listeners)
        return result

    async def _drain(self, budget: float) -> bool:
        s = self.services
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        self.started = False
        # Responses now say `Connection: close`, so keep-alive callers reconnect elsewhere.
        s.state.draining = True
        registration = s.discovery.registration
        if registration is not None and registration.registered:
            # Callers learn of the maintenance through their own blocking queries; until they
            # do, requests keep arriving. Serve them until traffic has been quiet for a moment.
            await s.state.wait_quiet(LATE_ARRIVAL_QUIET, deadline)
        for lst in self.listeners:
            if lst.server is not None:
                lst.server.close()
        s.state.start_drain()
        s.h2_connections.start_drain()
        ok = await s.state.wait_idle(max(0.0, deadline - loop.time()))
        if not ok:
            log.warning("drain timeout: %d requests still in flight", s.state.active_requests)
        return ok

    async def stop(self) -> None:
        s = self.services
        self._close_listeners()
        for conn in list(s.state.connections):
            conn.close_if_idle()
        closed = s.state.tunnels.close_all()
        if closed:
            log.info("closed %d open tunnels", closed)
        await s.health_checks.stop()
        await s.discovery.close()
        await s.admin.stop()
        s.client.close()
        s.h2_connections.close()
        s.h2_client.close()
        # Flushing spans and the access log blocks on I/O: keep it off the event loop.
        await asyncio.to_thread(s.tracing.shutdown)
        if s.access_log is not None:
            await asyncio.to_thread(s.access_log.close)


def restart_needed(old: Config, new: Config) -> list[str]:
    """What a reload cannot apply: these are bound or built once at start."""
    changes = []
    if new.listen_addresses() != old.listen_addresses():
        changes.append("listener addresses changed in the new config: restart to apply them")
    if new.discovery.file != old.discovery.file or new.discovery.consul != old.discovery.consul:
        changes.append("discovery.file / discovery.consul changed: restart to apply them")
    return changes


def install_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], reload: Callable[[], None]
) -> None:
    """SIGTERM and SIGINT stop (drain, then exit); SIGHUP reloads the config file."""
    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
