"""An HTTPS upstream double (aiohttp over TLS with `trustme` certificates) that counts
handshakes and records the SNI and client certificate of each."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiohttp import web

from tests.doubles.h2_upstream import H2Upstream, _Conn


@dataclass
class TlsUpstream:
    cert: trustme.LeafCert
    client_ca: trustme.CA | None = None  # ask for (and verify) client certificates
    handshakes: int = 0
    server_names: list[str | None] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    resumed: list[bool] = field(default_factory=list)  # per request: on a resumed session?
    paths: list[str] = field(default_factory=list)  # per request
    alpn: list[str] = field(default_factory=list)  # protocols it accepts in the handshake
    port: int = 0
    runner: web.AppRunner | None = None

    def _on_hello(self, sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        self.handshakes += 1
        self.server_names.append(name)

    async def handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        self.resumed.append(bool(ssl_object is not None and ssl_object.session_reused))
        self.paths.append(request.path_qs)
        peer = transport.get_extra_info("peercert") if transport else None
        subject = ""
        if peer:
            subject = ",".join(v for _, v in peer.get("subjectAltName", ()))
            self.client_subjects.append(subject)
        body = {"path": request.path_qs, "host": request.headers.get("Host"), "client": subject}
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def start(self) -> TlsUpstream:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(ctx)
        if self.client_ca is not None:
            self.client_ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = self._on_hello
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class _TlsConn(_Conn):
    def __init__(self, up: TlsH2Upstream) -> None:
        super().__init__(up)
        self.tls_up = up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls_up.resumed.append(bool(ssl_object is not None and ssl_object.session_reused))
        super().connection_made(transport)


@dataclass
class TlsH2Upstream(H2Upstream):
    """The h2 upstream double (JSON echo of each request's pseudo-headers) over TLS, choosing
    `h2` in the handshake; records the server names asked for and resumed sessions."""

    cert: trustme.LeafCert | None = None
    server_names: list[str | None] = field(default_factory=list)
    resumed: list[bool] = field(default_factory=list)  # per connection

    async def start(self) -> TlsH2Upstream:
        assert self.cert is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["h2"])
        ctx.sni_callback = lambda _obj, name, _ctx: self.server_names.append(name)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TlsConn(self), "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self
