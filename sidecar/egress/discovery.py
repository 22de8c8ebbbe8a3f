"""Egress names as a discovery source: an allow-listed name, once asked for, is an upstream
with one logical endpoint, the name itself (resolved at connect time by the dialer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Publish
from sidecar.egress.policy import EgressPolicy
from sidecar.vocab.endpoint import Endpoint


class EgressResolver:
    source = "egress"

    def __init__(self, policy: EgressPolicy, port_for: Callable[[str], int]) -> None:
        self._policy = policy
        self._port_for = port_for  # 443 where the policy originates TLS, else 80
        self._publish: Publish | None = None
        self._pending: list[str] = []
        self._published: set[str] = set()

    def replace(self, policy: EgressPolicy) -> list[str]:
        """Allow what `policy` allows from now on; the names published before that it no
        longer allows (to be withdrawn from the directory)."""
        self._policy = policy
        gone = sorted(n for n in self._published if not policy.allows(n))
        self._published.difference_update(gone)
        self._pending = [n for n in self._pending if policy.allows(n)]
        return gone

    def static_names(self) -> frozenset[str]:
        return frozenset()

    def can_resolve(self, name: str) -> bool:
        return self._policy.allows(name)

    def start_watch(self, name: str) -> None:
        self._published.add(name)
        if self._publish is None:
            self._pending.append(name)
        else:
            self._publish(self._snapshot(name))

    def _snapshot(self, name: str) -> EndpointSet:
        return EndpointSet(name, (Endpoint(name, self._port_for(name)),), self.source, time.time())

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        for name in self._pending:
            publish(self._snapshot(name))
        self._pending.clear()
        await asyncio.Event().wait()  # nothing to watch: names are resolved at connect time
