"""Outbound routing: which upstream a request is for, and never anything else.

The name comes from the absolute URI (HTTP_PROXY clients), else the Host header, else the
listener's fixed upstream. Only configured or discovered names are routable; literal IPs and
localhost are refused outright, so the sidecar is never an open proxy or an SSRF pivot."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httptools

from sidecar.discovery.resolver import Directory
from sidecar.errors import BadRequest, NoRoute
from sidecar.http import Request, Response
from sidecar.stack import Exchange, Filter, Handler
from sidecar.transport.tunnel import CONNECT_UPGRADE, refused_upgrade
from sidecar.vocab.addresses import is_literal_ip

_CONSUL_SUFFIXES = (".service.consul",)
# What inet_aton(3) would read as an IPv4 address: 1-4 parts, each decimal, octal (leading 0)
# or hex (0x), e.g. 2130706433, 0x7f.1, 0177.0.0.1, 127.1. A resolver handed such a "name"
# may connect to it, so it is never a name.
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}$")


def is_address_like(host: str) -> bool:
    """A literal IP in any spelling (IPv6, dotted, integer, hex, octal, short form)."""
    return is_literal_ip(host) or _NUMERIC_HOST.match(host.strip().lower().rstrip(".")) is not None


def normalise_name(host: str) -> str:
    name = host.strip().lower().rstrip(".")
    for suffix in _CONSUL_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def checked_authority(host: str) -> tuple[str, str]:
    """(`host` as a Host field value to forward, its host part), for RFC 9110 §7.2's
    uri-host [":" port], with an empty port dropped; BadRequest when the port is not a port
    number. RFC 9112 §3.2 requires a 400 for an invalid Host, and re-sending what we could not
    parse would let the upstream read it differently from how we routed it."""
    if host.startswith("["):
        end = host.find("]") + 1
        if end == 0:
            raise BadRequest("malformed Host header: unterminated IPv6 literal")
    else:
        end = host.find(":")
        if end < 0:
            return host, host
    if end == len(host):
        return host, host
    if host[end] != ":":
        raise BadRequest("malformed Host header: text after the IPv6 literal")
    port = host[end + 1 :]
    if not port:
        return host[:end], host[:end]  # "name:" is "name" (RFC 3986 §6.2.3)
    if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535):
        raise BadRequest(f"malformed Host header: port {port[:20]!r} is not a port number")
    return host, host[:end]


def route_target(request: Request) -> str:
    """Set request.target/authority from an absolute-form URI; return the upstream host name."""
    target = request.target
    if target.startswith("/") or target == "*":
        raw = request.headers.get("host")
        if not raw:
            raise BadRequest("missing Host header: cannot tell which upstream to call")
        authority, host = checked_authority(raw)
        if authority is not raw:
            request.headers.set("host", authority)
        request.authority = authority
        return host
    try:
        # Any, not httptools' URL stub: it says bytes/int, but absent parts are None, and the
        # compiled build checks values against the declared types.
        url: Any = httptools.parse_url(target.encode("latin-1"))
    except httptools.HttpParserInvalidURLError:
        raise BadRequest("malformed request target") from None
    schema: bytes | None = url.schema
    raw_host: bytes | None = url.host
    raw_path: bytes | None = url.path
    query: bytes | None = url.query
    port: int | None = url.port
    scheme = (schema or b"").decode().lower()
    if scheme != "http":
        raise BadRequest(f"unsupported scheme {scheme or '(none)'!r}: only http:// is forwarded")
    host = (raw_host or b"").decode("latin-1")
    if not host:
        raise BadRequest("absolute URI without a host")
    path = (raw_path or b"/").decode("latin-1")
    request.target = path + ("?" + query.decode("latin-1") if query else "")
    request.authority = host if port is None else f"{host}:{port}"
    request.headers.set("host", request.authority)
    return host


_NAME_CACHE_SIZE = 1024


def _checked_name(host: str) -> str:
    """The upstream name `host` asks for; NoRoute if it is an address or localhost."""
    name = normalise_name(host)
    if is_address_like(host) or is_address_like(name):
        raise NoRoute(f"literal IP address {host!r} is not routable: call an upstream by name")
    if name == "localhost" or name.endswith(".localhost"):
        raise NoRoute(f"{name!r} is not routable: call an upstream by name")
    return name


class OutboundRouter:
    """Terminal of the outbound listener stack: resolve the name, hand off to the upstream's
    own stack (built once per upstream, rebuilt after a reload)."""

    def __init__(
        self,
        directory: Directory,
        stack_for: Callable[[str], Handler],
        is_configured: Callable[[str], bool],
        resolve_timeout: float = 2.0,
        upgrades_for: Callable[[str], Iterable[str]] | None = None,
        connect: Handler | None = None,
    ) -> None:
        self._directory = directory
        self._stack_for = stack_for
        self._is_configured = is_configured
        self._resolve_timeout = resolve_timeout
        # The Upgrade tokens an upstream's policy lets through (`upstreams.<name>.upgrades`).
        self._upgrades_for = upgrades_for
        # CONNECT to allow-listed external hosts (egress), when configured.
        self._connect = connect
        # Host value → normalised name, for hosts that passed the address/localhost checks.
        # Those checks are pure functions of the text, so entries never go stale; what is
        # routable (config, discovery) is still asked on every request.
        self._names: dict[str, str] = {}

    def upstream_name(self, request: Request) -> str:
        name = self._name_of(request)
        self._check_routable(name)
        return name

    def _name_of(self, request: Request) -> str:
        host = route_target(request)
        name = self._names.get(host)
        if name is None:
            name = _checked_name(host)
            if len(self._names) >= _NAME_CACHE_SIZE:
                self._names.clear()  # bounded: Host values come from clients
            self._names[host] = name
        return name

    def _check_routable(self, name: str) -> None:
        if not (self._is_configured(name) or self._directory.is_routable(name)):
            raise NoRoute(f"unknown upstream {name!r}", upstream=name)

    def path_for(self, request: Request) -> Handler | None:
        """The path of the upstream `request` is for, for the caller to continue on (a
        `Chain` runs its stages in the same coroutine); None when there is none to take at
        once (CONNECT, or a name no source has published yet): then call the router.
        A refusal is raised here."""
        if request.upgrade == CONNECT_UPGRADE and self._connect is not None:
            return None
        name = request.upstream
        # A name with a published snapshot is routable: on that (common) path the
        # configured-or-discoverable check, a call into the composition root, is skipped.
        snap = None
        if not name:
            name = request.upstream = self._name_of(request)
            snap = self._directory.lookup(name)
            if snap is None:
                self._check_routable(name)
        if request.upgrade and self._upgrades_for is not None:
            refused = refused_upgrade(request.upgrade, self._upgrades_for(name), name)
            if refused is not None:
                raise refused
        if snap is None and self._directory.lookup(name) is None:
            return None
        return self._stack_for(name)

    def __call__(self, request: Request) -> Awaitable[Response]:
        # Not a coroutine: on the common path this hands back the upstream path's own
        # awaitable (one frame fewer per request). A refusal raised here is raised where the
        # caller awaits the call, as it would be from a coroutine.
        if request.upgrade == CONNECT_UPGRADE and self._connect is not None:
            return self._connect(request)
        path = self.path_for(request)
        if path is None:
            return self._resolve_then_call(request.upstream, request)
        return path(request)

    async def _resolve_then_call(self, name: str, request: Request) -> Response:
        # First call of a name no source has published yet (e.g. a Consul service used for
        # the first time): start its watch and wait, bounded, for the first answer.
        snap = await self._directory.resolve(name, self._resolve_timeout)
        if snap is None and not self._is_configured(name):
            raise NoRoute(f"unknown upstream {name!r}", upstream=name)
        return await self._stack_for(name)(request)


class PinnedUpstream(Filter):
    """A filter for a listener bound to one upstream (`upstreams.<name>.listen`): every
    request on it is for that upstream, whatever its Host says."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def on_request(self, x: Exchange) -> Response | None:
        x.request.upstream = self._name
        x.request.authority = self._name
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        return None
