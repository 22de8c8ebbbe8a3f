"""Endpoints and the snapshots resolvers publish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    weight: int = 1
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """One resolver's complete view of an upstream at a moment (a snapshot, not a delta).

    `endpoints` empty means "known, but nothing passing" (503 no_healthy_endpoints);
    a name the resolver does not know at all is `None` at the Directory level (404 no_route)."""

    upstream: str
    endpoints: tuple[Endpoint, ...]
    source: str  # "static" | "file" | "consul"
    updated_at: float  # wall-clock seconds (exported as a timestamp metric)
