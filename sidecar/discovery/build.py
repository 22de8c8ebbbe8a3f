"""Builds the discovery side from config: resolvers in priority order, the Directory over them,
the shared Consul client, and the Lifecycle that orders sync, registration and shutdown.

Kept apart from the composition root so the wiring of "which sources, in which order, who
needs to be told about a reload" reads in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.discovery.file import FileResolver
from sidecar.discovery.registration import Lifecycle
from sidecar.discovery.resolver import Directory, Resolver
from sidecar.discovery.static import StaticResolver
from sidecar.egress.policy import EgressPolicy
from sidecar.events import Observer

if TYPE_CHECKING:
    # The Consul modules pull in aiohttp's client (~several MiB): imported at run time only
    # when discovery.consul is configured.
    from sidecar.discovery.consul import ConsulResolver
    from sidecar.discovery.consul_http import ConsulHttp
    from sidecar.discovery.registration import ConsulRegistration


class AllSynced:
    """Readiness over several sources: synced when every one of them is."""

    def __init__(self, sources: list[FileResolver | ConsulResolver]) -> None:
        self._sources = sources

    def pending_sync(self) -> list[str]:
        return [name for s in self._sources for name in s.pending_sync()]

    async def wait_synced(self, within: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for source in self._sources:
            if not await source.wait_synced(max(0.0, deadline - loop.time())):
                return False
        return True


@dataclass
class Discovery:
    directory: Directory
    static: StaticResolver
    file: FileResolver | None
    consul: ConsulResolver | None
    consul_http: ConsulHttp | None
    registration: ConsulRegistration | None
    lifecycle: Lifecycle

    def reload(self, config: Config) -> None:
        """Apply what a reloaded config can change without a restart."""
        for name in self.static.replace(config.discovery.static):
            self.directory.withdraw(self.static.source, name)
        if self.consul is not None:
            self.consul.set_names(consul_names(config))

    async def close(self) -> None:
        await self.directory.stop()
        if self.consul_http is not None:
            await self.consul_http.close()


def consul_names(config: Config) -> set[str]:
    """Names watched in Consul from the start: configured ones that static doesn't pin, and
    that are not external (an `upstreams.<name>` policy for an egress name is not a service:
    Consul's empty answer for it would win over the egress resolver)."""
    names = config.configured_upstreams() - set(config.discovery.static)
    if config.egress is not None:
        policy = EgressPolicy(config.egress)
        names = {n for n in names if not policy.allows(n)}
    return names


def build_discovery(
    config: Config,
    observer: Observer,
    clock: Clock,
    base_dir: Path | None = None,
    last: Sequence[Resolver] = (),
) -> Discovery:
    """`base_dir`: where a relative `discovery.file.path` is found (the config file's folder).
    `last`: resolvers consulted after the configured sources (egress names)."""
    static = StaticResolver(config.discovery.static)
    resolvers: list[Resolver] = [static]
    synced: list[FileResolver | ConsulResolver] = []
    file_resolver = None
    if config.discovery.file is not None:
        path = Path(config.discovery.file.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        file_resolver = FileResolver(path, observer=observer)
        resolvers.append(file_resolver)
        synced.append(file_resolver)
    consul: ConsulResolver | None = None
    http: ConsulHttp | None = None
    registration: ConsulRegistration | None = None
    consul_cfg = config.discovery.consul
    if consul_cfg is not None:
        from sidecar.discovery.consul import ConsulResolver
        from sidecar.discovery.consul_http import ConsulHttp
        from sidecar.discovery.registration import ConsulRegistration, service_registration

        http = ConsulHttp(
            consul_cfg.address, token=consul_cfg.token, datacenter=consul_cfg.datacenter
        )
        consul = ConsulResolver(
            consul_cfg,
            http,
            names=consul_names(config),
            observer=observer,
            clock=clock,
        )
        resolvers.append(consul)
        synced.append(consul)
        if consul_cfg.register_service:
            svc = config.service
            registration = ConsulRegistration(
                http,
                service_registration(
                    name=svc.name,
                    inbound=config.listeners.inbound,
                    service_address=svc.address,
                    health_path=svc.health_path,
                    tags=svc.tags,
                    meta=svc.meta,
                    deregister_critical_after=consul_cfg.deregister_critical_after,
                ),
            )
    directory = Directory([*resolvers, *last])
    if file_resolver is not None:
        file_resolver.use_withdraw(directory.withdraw)
    if consul is not None:
        consul.use_directory(directory.withdraw, directory.take_used)
    lifecycle = Lifecycle(resolver=AllSynced(synced) if synced else None, registration=registration)
    return Discovery(directory, static, file_resolver, consul, http, registration, lifecycle)
