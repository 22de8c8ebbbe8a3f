"""The terminal handler: send a request to `request.endpoint` over a pooled connection."""

from __future__ import annotations

from sidecar.errors import UpstreamConnectFailure, UpstreamReset
from sidecar.grpc import is_grpc
from sidecar.http import Request, Response
from sidecar.resilience.budget import RetryBudget
from sidecar.transport.client import Dialer, EndpointPool, StaleConnection, UpstreamClient
from sidecar.transport.h2_lazy import LazyH2Client, NotHttp2
from sidecar.transport.tls import TlsOrigination
from sidecar.transport.tunnel import Tunnel
from sidecar.vocab.methods import IDEMPOTENT_METHODS as _IDEMPOTENT

# Methods that may be sent again after the upstream may have seen them (RFC 9110 §9.2.2).
# Anything else (POST, PATCH, ...) is re-sent only if not one byte of it was written (RFC 9112
# §9.3.1.1): a reset after writing may come from an upstream that already acted on it.


class Forwarder:
    """Forwards to the endpoint the balancer chose. Returns at response headers; the body
    streams. Raises UpstreamConnectFailure / UpstreamReset.

    With a `budget` (the upstream's retry budget), re-sending a request on a fresh
    connection after a stale pooled one failed counts as a retry and needs the budget's yes."""

    def __init__(
        self,
        client: UpstreamClient,
        connect_timeout: float,
        idle_timeout: float,
        stream_idle_timeout: float = 3600.0,
        tls: TlsOrigination | None = None,
        dialer: Dialer | None = None,
        h2: LazyH2Client | None = None,
        protocol: str = "http1",
        budget: RetryBudget | None = None,
    ) -> None:
        self._client = client
        self.tls = tls
        self.dialer = dialer
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.stream_idle_timeout = stream_idle_timeout
        # upstreams.<name>.protocol: h2 / h2c always, auto for callers that came over HTTP/2.
        self._h2 = h2 if protocol != "http1" else None
        self._h2_always = protocol in ("h2", "h2c")
        self.budget = budget
        self.stale_resends = 0

    async def forward(self, request: Request) -> Response:
        endpoint = request.endpoint
        assert endpoint is not None, "the balance layer sets request.endpoint"
        h2 = self._h2
        if h2 is not None and (self._h2_always or request.http_version == "2"):
            if self._h2_always or h2.speaks_h2(endpoint):
                try:
                    return await h2.send(
                        request,
                        self.connect_timeout,
                        fallback=not self._h2_always,
                        dialer=self.dialer,
                        tls=self.tls,
                    )
                except NotHttp2 as exc:
                    if self._h2_always or is_grpc(request.headers):
                        raise
                    # (refused in the TLS handshake, or answered in HTTP/1.x before any of
                    # the body was taken: the body is whole)
                    if not request.body.replayable and not exc.body_intact:
                        raise
            elif is_grpc(request.headers):
                raise UpstreamConnectFailure(
                    f"{endpoint} speaks only HTTP/1.x; gRPC needs HTTP/2",
                    upstream=request.upstream,
                )
        pool = self._client.pool(
            request.upstream,
            endpoint,
            self.connect_timeout,
            self.idle_timeout,
            self.tls,
            self.dialer,
        )
        headers = request.headers.items()
        authority = request.authority
        # Host goes first; usually the client sent it first, with this value, already (an
        # HTTP/1.1 listener refuses a second Host, so there is none further on).
        if authority and not (
            request.http_version != "2" and headers and headers[0] == ("host", authority)
        ):
            headers = [("host", authority), *[(k, v) for k, v in headers if k != "host"]]
        if request.upgrade:
            return await self._upgrade(request, pool, headers)
        conn = pool.take_idle()
        reused = conn is not None
        if conn is None:
            conn, _ = await pool.acquire_fresh()
        try:
            return await conn.send(
                request.method, request.target, headers, request.body, origin=request
            )
        except StaleConnection:
            # Found closed before a byte was written: safe to send anywhere, for any method.
            if not request.body.replayable:
                raise
        except UpstreamReset:
            # A reused keep-alive connection the upstream had just closed (no byte of an
            # answer came back). Only an idempotent request is sent again: the upstream may
            # have received and acted on it before closing.
            if (
                not reused
                or conn.received_any
                or request.method not in _IDEMPOTENT
                or not request.body.replayable
            ):
                raise
            budget = self.budget
            if budget is not None and not budget.try_withdraw():
                raise
        self.stale_resends += 1
        conn, _ = await pool.acquire_fresh()
        return await conn.send(
            request.method, request.target, headers, request.body, origin=request
        )

    async def _upgrade(
        self, request: Request, pool: EndpointPool, headers: list[tuple[str, str]]
    ) -> Response:
        """An Upgrade request goes on a fresh connection: after a 101 it becomes the tunnel's,
        and a pooled one may be closed by the upstream as we send (no safe resend here)."""
        conn, _ = await pool.acquire_fresh()
        response = await conn.send(
            request.method,
            request.target,
            headers,
            request.body,
            upgrade=request.upgrade,
            origin=request,
        )
        if isinstance(response.body, Tunnel):
            response.body.idle_timeout = self.stream_idle_timeout
        return response
