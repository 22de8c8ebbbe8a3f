"""The snapshots resolvers publish."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.vocab.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """One resolver's complete view of an upstream at a moment (a snapshot, not a delta).

    `endpoints` empty means "known, but nothing passing" (503 no_healthy_endpoints);
    a name the resolver does not know at all is `None` at the Directory level (404 no_route)."""

    upstream: str
    endpoints: tuple[Endpoint, ...]
    source: str  # "static" | "file" | "consul"
    updated_at: float  # wall-clock seconds (exported as a timestamp metric)
