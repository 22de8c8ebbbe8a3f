"""The HTTP/2 stack, loaded when it is first needed.

`h2`, `hpack` and `hyperframe` (and our modules over them) cost ~4.5 MiB at import: a sidecar
whose callers and upstreams speak only HTTP/1.1 should not pay it. These stand-ins are what the
composition root builds; the first HTTP/2 connection on a listener, or the first request that
goes to an upstream over HTTP/2, imports the real thing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.errors import UpstreamReset
from sidecar.http import Request, Response
from sidecar.stack import Handler
from sidecar.transport.budget import ConnectionBudget
from sidecar.vocab.endpoint import Endpoint

if TYPE_CHECKING:
    from sidecar.transport.h2_client import H2Client
    from sidecar.transport.h2_server import H2Connections
    from sidecar.transport.tls import TlsOrigination

# A listener calls this when a connection's first bytes are the HTTP/2 preface, with the
# listener's connection budget: the HTTP/2 connection takes its slot over.
H2Handover = Callable[[asyncio.Transport, bytes, ConnectionBudget | None], None]


class NotHttp2(UpstreamReset):
    """The endpoint answered the HTTP/2 preface with HTTP/1.x: it never saw the request.
    `body_intact`: nothing of the request's body was taken (the client waits for the
    upstream's SETTINGS before taking any of a streamed body), so it may go over HTTP/1.1
    instead even when it could not be replayed."""

    def __init__(self, message: str, *, upstream: str = "", body_intact: bool = False) -> None:
        super().__init__(message, upstream=upstream)
        # (set here, not as a class default: this module is compiled, its base is not)
        self.body_intact = body_intact


class AlpnHttp1(NotHttp2):
    """The endpoint chose HTTP/1.1 (or no protocol) in the TLS handshake: nothing of the
    request was sent, so any request may go over HTTP/1.1 instead."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(message, upstream=upstream, body_intact=True)


class RequestCounter(Protocol):
    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...


class LazyH2Client:
    """The upstream HTTP/2 client, created on first use."""

    __slots__ = ("_client",)

    def __init__(self) -> None:
        self._client: H2Client | None = None

    def get(self) -> H2Client:
        if self._client is None:
            from sidecar.transport.h2_client import H2Client

            self._client = H2Client()
        return self._client

    def speaks_h2(self, endpoint: Endpoint) -> bool:
        return self.get().speaks_h2(endpoint)

    def send(
        self,
        request: Request,
        connect_timeout: float,
        *,
        fallback: bool,
        dialer: Callable[[str, int, float], Awaitable[socket.socket]] | None = None,
        tls: TlsOrigination | None = None,
    ) -> Awaitable[Response]:
        # The client's own coroutine, handed back to be awaited: no coroutine of ours around it.
        return self.get().send(request, connect_timeout, fallback=fallback, dialer=dialer, tls=tls)

    def buffered_bytes(self) -> int:
        return 0 if self._client is None else self._client.buffered_bytes()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LazyH2Connections:
    """The listeners' HTTP/2 connections, with their limits; the registry is created (and the
    HTTP/2 stack imported) by the first HTTP/2 connection."""

    __slots__ = ("_draining", "_limits", "_registry", "_requests")

    def __init__(
        self,
        requests: RequestCounter,
        max_concurrent_streams: int,
        max_header_bytes: int,
        max_body_bytes: int | None,
    ) -> None:
        self._requests = requests
        self._limits = (max_concurrent_streams, max_header_bytes, max_body_bytes)
        self._registry: H2Connections | None = None
        self._draining = False

    def get(self) -> H2Connections:
        if self._registry is None:
            from sidecar.transport.h2_server import H2Connections, H2Limits

            streams, header_bytes, body_bytes = self._limits
            self._registry = H2Connections(
                H2Limits(
                    max_concurrent_streams=streams,
                    max_header_bytes=header_bytes,
                    max_body_bytes=body_bytes,
                ),
                self._requests,
            )
            if self._draining:
                self._registry.start_drain()
        return self._registry

    @property
    def connections(self) -> set[Any]:
        return set() if self._registry is None else self._registry.connections

    def start_drain(self) -> None:
        self._draining = True
        if self._registry is not None:
            self._registry.start_drain()

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def lazy_handover(
    handler: Handler,
    registry: LazyH2Connections,
    direction: str,
    prepare: Callable[[Request], None] | None = None,
) -> H2Handover:
    """A listener's HTTP/2 handover, bound to the real one on the first HTTP/2 connection."""
    real: list[H2Handover] = []

    def take_over(
        transport: asyncio.Transport, first: bytes, budget: ConnectionBudget | None
    ) -> None:
        if not real:
            from sidecar.transport.h2_server import h2_handover

            real.append(h2_handover(handler, registry.get(), direction, prepare))
        real[0](transport, first, budget)

    return take_over
