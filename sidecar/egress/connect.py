"""CONNECT to allow-listed external hosts: an opaque TCP tunnel (the app's TLS goes end to
end), with the connect timeout, the egress address check and L4 telemetry (tunnel bytes and
duration; connect errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from sidecar.egress.dialer import EgressDialer
from sidecar.egress.policy import EgressPolicy
from sidecar.errors import BadRequest, SidecarError, UpstreamConnectFailure
from sidecar.http import Headers, Request, Response
from sidecar.proxy.routing import checked_authority, is_address_like, normalise_name
from sidecar.transport.tunnel import Tunnel


class ConnectObserver(Protocol):
    def tunnel_connect_error(self, upstream: str) -> None: ...


class _Buffer(asyncio.Protocol):
    """Holds what the target sends before the tunnel takes the connection over."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)


class ConnectHandler:
    def __init__(
        self,
        policy: EgressPolicy,
        dialer: EgressDialer,
        timeouts_for: Callable[[str], tuple[float, float]],  # (connect, stream_idle)
        observer: ConnectObserver | None = None,
    ) -> None:
        self.policy = policy  # replaced whole on reload
        self._dial = dialer
        self._timeouts_for = timeouts_for
        self._observer = observer

    def target(self, request: Request) -> tuple[str, int]:
        """The allow-listed (name, port) a CONNECT asks for; BadRequest (403) otherwise."""
        authority, host = checked_authority(request.target)
        port_text = authority[len(host) + 1 :]
        if not port_text:
            raise BadRequest("CONNECT needs host:port")
        name, port = normalise_name(host), int(port_text)
        if is_address_like(host) or not self.policy.allows(name):
            raise BadRequest(
                f"CONNECT to {name!r} is not allowed: it is not listed in egress.allow",
                status=403,
            )
        if port not in self.policy.connect_ports:
            raise BadRequest(
                f"CONNECT to port {port} is not allowed: egress.connect_ports is "
                f"{sorted(self.policy.connect_ports)}",
                status=403,
                upstream=name,
            )
        return name, port

    async def __call__(self, request: Request) -> Response:
        name, port = self.target(request)
        request.upstream = name
        connect_timeout, stream_idle = self._timeouts_for(name)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                sock = await self._dial(name, port, connect_timeout)
                transport, buffer = await loop.create_connection(_Buffer, sock=sock)
        except TimeoutError:
            self._connect_error(name)
            raise UpstreamConnectFailure(
                f"CONNECT to {name}:{port} timed out", upstream=name
            ) from None
        except OSError as exc:
            self._connect_error(name)
            raise UpstreamConnectFailure(
                f"CONNECT to {name}:{port} failed: {exc.strerror or exc}", upstream=name
            ) from None
        except SidecarError:
            self._connect_error(name)
            raise
        tunnel = Tunnel(transport, upstream=name, protocol="connect", early=b"".join(buffer.data))
        tunnel.idle_timeout = stream_idle
        return Response(status=200, headers=Headers(), body=tunnel, reason="Connection Established")

    def _connect_error(self, name: str) -> None:
        if self._observer is not None:
            self._observer.tunnel_connect_error(name)
