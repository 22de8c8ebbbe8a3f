"""The terminal handler: send a request to `request.endpoint` over a pooled connection."""

from __future__ import annotations

from sidecar.errors import UpstreamReset
from sidecar.http import Request, Response
from sidecar.resilience.budget import RetryBudget
from sidecar.transport.client import StaleConnection, UpstreamClient

# Methods that may be sent again after the upstream may have seen them (RFC 9110 §9.2.2).
# Anything else (POST, PATCH, ...) is re-sent only if not one byte of it was written (RFC 9112
# §9.3.1.1): a reset after writing may come from an upstream that already acted on it.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Forwarder:
    """Forwards to the endpoint the balancer chose. Returns at response headers; the body
    streams. Raises UpstreamConnectFailure / UpstreamReset (DESIGN §6).

    With a `budget` (the upstream's retry budget), re-sending a request on a fresh
    connection after a stale pooled one failed counts as a retry and needs the budget's yes."""

    def __init__(
        self,
        client: UpstreamClient,
        connect_timeout: float,
        idle_timeout: float,
        budget: RetryBudget | None = None,
    ) -> None:
        self._client = client
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.budget = budget
        self.stale_resends = 0

    async def forward(self, request: Request) -> Response:
        endpoint = request.endpoint
        assert endpoint is not None, "the balance layer sets request.endpoint"
        pool = self._client.pool(
            request.upstream, endpoint, self.connect_timeout, self.idle_timeout
        )
        headers = request.headers.items()
        if request.authority:
            headers = [("host", request.authority), *[(k, v) for k, v in headers if k != "host"]]
        conn, reused = await pool.acquire()
        try:
            return await conn.send(request.method, request.target, headers, request.body, request)
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
        return await conn.send(request.method, request.target, headers, request.body, request)
