"""Endpoints written in the config file (`discovery.static`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Publish
from sidecar.vocab.endpoint import Endpoint, parse_endpoint_address


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` or `https://host:port` (validated by the config already)."""
    return parse_endpoint_address(text)


class StaticResolver:
    source = "static"

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {
            name: tuple(parse_endpoint(a) for a in addrs) for name, addrs in table.items()
        }
        self._publish: Publish | None = None

    def static_names(self) -> frozenset[str]:
        return frozenset(self._table)

    def can_resolve(self, name: str) -> bool:
        return name in self._table

    def start_watch(self, name: str) -> None:
        pass

    def snapshots(self) -> list[EndpointSet]:
        now = time.time()
        return [EndpointSet(n, eps, self.source, now) for n, eps in self._table.items()]

    def replace(self, table: Mapping[str, Sequence[str]]) -> list[str]:
        """Swap in a reloaded table; returns names that disappeared."""
        gone = [n for n in self._table if n not in table]
        self._table = {
            name: tuple(parse_endpoint(a) for a in addrs) for name, addrs in table.items()
        }
        if self._publish is not None:
            for snap in self.snapshots():
                self._publish(snap)
        return gone

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        for snap in self.snapshots():
            publish(snap)
        await asyncio.Event().wait()  # static: nothing more to do until cancelled or reloaded
