"""TLS the sidecar originates to upstreams: one client SSLContext per upstream policy, built
once (loading a trust store costs milliseconds), and the server name each endpoint is
verified against.

Keep-alive pooling means a handshake per connection, not per request; and a new connection
resumes the last session of the same server name (an abbreviated handshake), which asyncio
does not offer by itself: the context hands the session to each new SSLObject."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

from sidecar.config import TlsConfig
from sidecar.vocab.addresses import is_literal_ip
from sidecar.vocab.endpoint import Endpoint

# Server names whose last session is kept (each holds a finished SSLObject, a few KiB).
MAX_SESSIONS = 1024


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
    if config.alpn:
        context.set_alpn_protocols(config.alpn)
    return TlsOrigination(context, config.sni, config.verify, tuple(config.alpn))


@functools.cache
def default_tls() -> TlsOrigination:
    """For endpoints written https://host:port under an upstream without a `tls` policy:
    the system trust store, verification on."""
    tls = build_tls(TlsConfig())
    assert tls is not None
    return tls
