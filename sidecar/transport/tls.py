"""TLS the sidecar originates to upstreams: one client SSLContext per upstream policy, built
once (loading a trust store costs milliseconds), and the server name each endpoint is
verified against.

Keep-alive pooling means a handshake per connection, not per request; and a new connection
resumes the last session of the same server name (an abbreviated handshake), which asyncio
does not offer by itself: the context hands the session to each new SSLObject."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.config import TlsConfig
from sidecar.errors import UpstreamConnectFailure
from sidecar.vocab.addresses import is_literal_ip
from sidecar.vocab.endpoint import Endpoint

# Server names whose last session is kept (each holds a finished SSLObject, a few KiB).
MAX_SESSIONS = 1024

# What an HTTP/2 connection offers: only h2 when the upstream must speak HTTP/2 (protocol h2 /
# h2c), h2 then http/1.1 when the server may choose (protocol auto).
ALPN_H2 = ("h2",)
ALPN_H2_OR_HTTP1 = ("h2", "http/1.1")


class ResumingContext(ssl.SSLContext):
    """A client context that resumes the last session it saw for a server name."""

    _last: dict[str, ssl.SSLObject]

    def remember(self, server_hostname: str | None, ssl_object: ssl.SSLObject) -> None:
        # The object, not `.session`: a TLS 1.3 ticket arrives after the handshake.
        if server_hostname is None:
            return
        last = self.__dict__.setdefault("_last", {})
        if len(last) >= MAX_SESSIONS and server_hostname not in last:
            last.clear()
        last[server_hostname] = ssl_object

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and isinstance(server_hostname, str):
            previous = self.__dict__.get("_last", {}).get(server_hostname)
            if previous is not None:
                session = previous.session
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


@dataclass(frozen=True, slots=True)
class TlsOrigination:
    context: ResumingContext
    sni: str | None = None  # fixed server name; None: derived per endpoint
    verify: bool = True
    alpn: tuple[str, ...] = ()
    # The policy the context was built from, to build the same context offering other ALPN
    # protocols (HTTP/2 connections); None: the default policy.
    config: TlsConfig | None = None
    _offering: dict[tuple[str, ...], ResumingContext] = field(
        default_factory=dict, compare=False, repr=False
    )

    def offering(self, alpn: tuple[str, ...]) -> ResumingContext:
        """The policy's context offering `alpn`: same trust, verification and client
        certificate. Built once per list, as a context's ALPN applies to every connection it
        makes; each keeps its own sessions (one resumes only on the context that made it)."""
        if alpn == self.alpn:
            return self.context
        context = self._offering.get(alpn)
        if context is None:
            context = _context(self.config or TlsConfig(), alpn)
            self._offering[alpn] = context
        return context

    def server_hostname(self, endpoint: Endpoint, upstream: str) -> str | None:
        """The name sent as SNI and checked against the certificate: the configured one,
        else the endpoint's host when it is a name, else the upstream's name."""
        if self.sni:
            return self.sni
        if not is_literal_ip(endpoint.host):
            return endpoint.host
        # An address: verify the upstream's name (certificates rarely carry IPs); without
        # verification there's no name to send.
        return upstream if self.verify else None

    def describe(self) -> dict[str, object]:
        return {"enabled": True, "sni": self.sni, "verify": self.verify, "alpn": list(self.alpn)}


class TlsSetupError(ValueError):
    """A TLS policy whose files can't be used; the message names the problem."""


def build_tls(config: TlsConfig | None) -> TlsOrigination | None:
    """The TLS origination of a policy, or None when TLS is not configured/enabled."""
    if config is None or not config.enabled:
        return None
    context = _context(config, tuple(config.alpn))
    return TlsOrigination(context, config.sni, config.verify, tuple(config.alpn), config)


def _context(config: TlsConfig, alpn: tuple[str, ...]) -> ResumingContext:
    # PROTOCOL_TLS_CLIENT: what create_default_context uses (verification, hostname check).
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if config.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"ca_file {config.ca_file!r}: {exc}") from None
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert is not None:
        try:
            context.load_cert_chain(config.client_cert, config.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"client_cert/client_key: {exc}") from None
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def endpoint_tls(policy: TlsOrigination | None, endpoint: Endpoint) -> TlsOrigination | None:
    """The TLS an endpoint's connections use: the upstream's policy, else the default one for
    an endpoint written https://, else none (plaintext). One rule for requests over HTTP/1.1
    and HTTP/2, health checks and /admin/endpoints."""
    if policy is None and endpoint.tls:
        return default_tls()
    return policy


@functools.cache
def default_tls() -> TlsOrigination:
    """For endpoints written https://host:port under an upstream without a `tls` policy:
    the system trust store, verification on."""
    tls = build_tls(TlsConfig())
    assert tls is not None
    return tls


async def dial_tls(
    factory: Callable[[], asyncio.BaseProtocol],
    endpoint: Endpoint,
    dialer: Callable[[str, int, float], Awaitable[socket.socket]] | None,
    connect_timeout: float,
    upstream: str,
    tls: TlsOrigination,
    alpn: tuple[str, ...],
) -> asyncio.BaseProtocol:
    """A TLS connection to `endpoint` offering `alpn`, within `connect_timeout`; the protocol
    reads the chosen ALPN from its transport. Errors are UpstreamConnectFailure, with the
    certificate's or the handshake's reason."""
    name = tls.server_hostname(endpoint, upstream)
    try:
        context = tls.offering(alpn)
    except TlsSetupError as exc:  # the files changed since check-config
        raise UpstreamConnectFailure(f"TLS to {endpoint}: {exc}", upstream=upstream) from None
    try:
        async with asyncio.timeout(connect_timeout):
            loop = asyncio.get_running_loop()
            if dialer is None:
                transport, proto = await loop.create_connection(
                    factory, endpoint.host, endpoint.port, ssl=context, server_hostname=name
                )
            else:
                sock = await dialer(endpoint.host, endpoint.port, connect_timeout)
                transport, proto = await loop.create_connection(
                    factory, sock=sock, ssl=context, server_hostname=name
                )
    except TimeoutError:
        raise UpstreamConnectFailure(
            f"connect to {endpoint} (TLS) timed out", upstream=upstream
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamConnectFailure(
            f"TLS to {endpoint}: certificate not accepted for {name!r}: "
            f"{exc.verify_message or exc.reason}",
            upstream=upstream,
        ) from None
    except ssl.SSLError as exc:
        raise UpstreamConnectFailure(
            f"TLS handshake with {endpoint} failed: {exc.reason or exc}", upstream=upstream
        ) from None
    except OSError as exc:
        raise UpstreamConnectFailure(
            f"connect to {endpoint} failed: {exc.strerror or exc}", upstream=upstream
        ) from None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        context.remember(name, ssl_object)
    return proto
