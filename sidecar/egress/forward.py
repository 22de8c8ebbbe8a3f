"""The terminal of an egress upstream's stack: the port comes from the request (the app may
call api.example.com:8443), the address from the egress dialer (via the Forwarder's pool)."""

from __future__ import annotations

from sidecar.http import Request, Response
from sidecar.proxy.forward import Forwarder
from sidecar.vocab.endpoint import Endpoint


def authority_port(authority: str) -> int | None:
    """The explicit port of a Host value (`name:8443`, `[::1]:8443`), or None."""
    colon = authority.rfind(":")
    if colon < 0 or authority.endswith("]"):
        return None
    port = authority[colon + 1 :]
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


class EgressForwarder:
    def __init__(self, inner: Forwarder) -> None:
        self._inner = inner

    async def forward(self, request: Request) -> Response:
        endpoint = request.endpoint
        port = authority_port(request.authority)
        if endpoint is not None and port is not None and port != endpoint.port:
            request.endpoint = Endpoint(endpoint.host, port)
        return await self._inner.forward(request)
