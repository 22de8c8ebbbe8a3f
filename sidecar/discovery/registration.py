"""Self-registration in the local Consul agent, and the readiness of the discovery side.

Lifecycle (docs/discovery.md): bind listeners → first discovery sync → register → ready;
SIGTERM → maintenance on → drain → deregister → exit. The HTTP check goes through the sidecar's
inbound listener to the app's health path, so a passing check means sidecar *and* app work."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from sidecar.discovery.consul_http import ConsulError, ConsulHttp
from sidecar.discovery.consul_watch import Backoff

log = logging.getLogger(__name__)

_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def advertise_address(inbound_host: str, fallback: str) -> str:
    """The address other instances should dial: the inbound listener's host unless it is a
    wildcard, else this host's primary address (resolved at call time, not import)."""
    if inbound_host not in _WILDCARDS:
        return inbound_host.strip("[]")
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return fallback


def go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    name: str
    address: str  # advertised inbound address (callers' sidecars dial it)
    port: int  # inbound listener port
    health_path: str = "/healthz"
    tags: Sequence[str] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    check_interval: float = 10.0
    check_timeout: float = 5.0
    deregister_critical_after: float = 60.0

    @property
    def service_id(self) -> str:
        return f"{self.name}-{self.address}-{self.port}"

    def body(self) -> dict[str, Any]:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return {
            "Name": self.name,
            "ID": self.service_id,
            "Tags": list(self.tags),
            "Address": self.address,
            "Port": self.port,
            "Meta": dict(self.meta),
            "Check": {
                "Name": "sidecar inbound health",
                "HTTP": f"http://{host}:{self.port}{self.health_path}",
                "Method": "GET",
                "Interval": go_duration(self.check_interval),
                "Timeout": go_duration(self.check_timeout),
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_critical_after),
            },
        }


class ConsulRegistration:
    """Registers one service instance; `status` says where it stands (for logs and /readyz)."""

    def __init__(
        self,
        http: ConsulHttp,
        service: ServiceRegistration,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._http = http
        self.service = service
        self._backoff = Backoff(backoff_base, backoff_max)
        self.status = "not registered"
        self.registered = False
        self.last_error: str | None = None

    async def register(self) -> None:
        """Register, retrying with backoff while Consul is unreachable or refuses."""
        path = "/v1/agent/service/register"
        failures = 0
        while True:
            self.status = "registering"
            try:
                await self._http.put(path, {"replace-existing-checks": "true"}, self.service.body())
            except ConsulError as exc:
                delay = self._backoff.next()
                self.last_error = str(exc)
                self.status = f"consul registration pending: {exc}"
                failures += 1
                # The first failure is a warning, the retries debug: /readyz says why meanwhile.
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "consul registration of %s failed (retrying in %.1fs): %s",
                    self.service.service_id,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            self.registered = True
            self.last_error = None
            self.status = "registered"
            if failures:
                log.warning(
                    "registered %s in consul after %d failed attempts",
                    self.service.service_id,
                    failures,
                )
            else:
                log.info("registered %s in consul", self.service.service_id)
            return

    async def maintenance(self, enable: bool, reason: str = "") -> bool:
        """Mark the instance (un)available; False if Consul could not be told (logged)."""
        params = {"enable": "true" if enable else "false"}
        if reason:
            params["reason"] = reason
        path = f"/v1/agent/service/maintenance/{quote(self.service.service_id, safe='')}"
        try:
            await self._http.put(path, params)
        except ConsulError as exc:
            log.warning(
                "consul maintenance=%s for %s failed: %s", enable, self.service.service_id, exc
            )
            return False
        self.status = "maintenance" if enable else "registered"
        return True

    async def deregister(self) -> bool:
        path = f"/v1/agent/service/deregister/{quote(self.service.service_id, safe='')}"
        try:
            await self._http.put(path)
        except ConsulError as exc:
            # The check's DeregisterCriticalServiceAfter removes us eventually anyway.
            log.warning("consul deregister of %s failed: %s", self.service.service_id, exc)
            return False
        self.registered = False
        self.status = "deregistered"
        log.info("deregistered %s from consul", self.service.service_id)
        return True


class SyncSource(Protocol):
    """What Lifecycle needs from a resolver (ConsulResolver has both)."""

    def pending_sync(self) -> list[str]: ...

    async def wait_synced(self, within: float) -> bool: ...


class Lifecycle:
    """Start/stop ordering of discovery and registration, and the readiness they imply."""

    def __init__(
        self,
        *,
        resolver: SyncSource | None = None,
        registration: ConsulRegistration | None = None,
        sync_timeout: float = 10.0,
        deregister_timeout: float = 5.0,
    ) -> None:
        self._resolver = resolver
        self._registration = registration
        self._sync_timeout = sync_timeout
        self._deregister_timeout = deregister_timeout
        self._register_task: asyncio.Task[None] | None = None
        self._draining = False
        self._started = False

    def ready_reasons(self) -> list[str]:
        """Why the instance is not ready; empty means ready."""
        reasons: list[str] = []
        if self._draining:
            reasons.append("draining")
        if not self._started:
            reasons.append("starting")
        if self._resolver is not None:
            pending = self._resolver.pending_sync()
            if pending:
                reasons.append("discovery not yet synced: " + ", ".join(pending))
        reg = self._registration
        if reg is not None and not reg.registered and not self._draining:
            reasons.append(
                reg.status
                if reg.status.startswith("consul registration pending")
                else f"consul registration pending: {reg.status}"
            )
        return reasons

    async def start(self) -> None:
        """Call after listeners are bound and the Directory is started. Waits (bounded) for
        the first discovery sync, then registers in the background (retrying)."""
        if self._resolver is not None and not await self._resolver.wait_synced(self._sync_timeout):
            log.warning(
                "discovery not synced after %gs; registering anyway, /readyz says why",
                self._sync_timeout,
            )
        if self._registration is not None:
            self._register_task = asyncio.create_task(
                self._registration.register(), name="consul-register"
            )
        self._started = True

    async def shutdown(self, drain: Callable[[], Awaitable[None]]) -> None:
        """SIGTERM: maintenance on → `drain()` (serve in-flight and late requests) → deregister."""
        self._draining = True
        reg = self._registration
        if self._register_task is not None and not self._register_task.done():
            self._register_task.cancel()
            await asyncio.gather(self._register_task, return_exceptions=True)
        if reg is not None and reg.registered:
            try:
                await asyncio.wait_for(
                    reg.maintenance(True, "sidecar shutting down"), self._deregister_timeout
                )
            except TimeoutError:
                log.warning("consul maintenance timed out; draining anyway")
        await drain()
        if reg is not None and reg.registered:
            try:
                await asyncio.wait_for(reg.deregister(), self._deregister_timeout)
            except TimeoutError:
                log.warning("consul deregister timed out")


def service_registration(
    *,
    name: str,
    inbound: str,
    service_address: str,
    health_path: str,
    tags: Sequence[str],
    meta: Mapping[str, str],
    deregister_critical_after: float,
) -> ServiceRegistration:
    """The registration of this sidecar's service from config values: advertised address
    and port are the *inbound listener's* (so callers go through this sidecar), e.g.
    `service_registration(name=cfg.service.name, inbound=cfg.listeners.inbound, ...)`."""
    host, _, port = inbound.rpartition(":")
    return ServiceRegistration(
        name=name,
        address=advertise_address(host, service_address),
        port=int(port),
        health_path=health_path,
        tags=tuple(tags),
        meta=dict(meta),
        deregister_critical_after=deregister_critical_after,
    )
