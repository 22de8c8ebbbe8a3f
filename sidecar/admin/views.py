"""The sidecar's own admin views: /admin/config, /admin/endpoints, /admin/breakers, plus the
telemetry routes (/metrics, /debug/traces). Read-only looks at the running state."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.admin.server import AdminRoute, json_response
from sidecar.admin.telemetry import telemetry_routes
from sidecar.balance.view import endpoints_snapshot
from sidecar.config import Config, redacted
from sidecar.http import Request, Response
from sidecar.registry import UpstreamRegistry
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.span_buffer import SpanBuffer


def admin_routes(
    config: Callable[[], Config],
    upstreams: UpstreamRegistry,
    metrics: Metrics,
    spans: SpanBuffer | None,
) -> list[AdminRoute]:
    """`config` is read per request: a reload replaces it."""

    async def config_view(request: Request) -> Response:
        return json_response(redacted(config()))

    async def endpoints_view(request: Request) -> Response:
        now = upstreams.clock.monotonic()
        return json_response(
            {
                name: [
                    {**row, "tls": upstreams.tls_state(name, st.endpoint)}
                    for row, st in zip(
                        endpoints_snapshot(cluster, upstreams.balancers.get(name), now),
                        cluster.states,
                        strict=True,
                    )
                ]
                for name, cluster in sorted(upstreams.clusters.items())
            }
        )

    async def breakers_view(request: Request) -> Response:
        return json_response({n: b.snapshot() for n, b in sorted(upstreams.breakers.items())})

    routes: list[AdminRoute] = [
        ("GET", "/admin/config", config_view),
        ("GET", "/admin/endpoints", endpoints_view),
        ("GET", "/admin/breakers", breakers_view),
    ]
    scraped = metrics if config().metrics.enabled else None
    return routes + telemetry_routes(scraped, spans)
