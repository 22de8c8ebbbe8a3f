"""What every request gets before the layer stack sees it: hop-by-hop stripping, forwarding
headers, a request id. Done once at the listener so every layer sees clean headers.

This runs on every request, so it is one pass over the fields rather than a filter followed by
get/set calls that each rescan and rebuild the list.

Forwarding headers say what the sidecar saw, unless the client is a proxy we trust
(`trusted_proxies`): from anyone else, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
are claims about a hop we did not see, so they are overwritten (a caller must not be able to
tell the app it came over https or for another host). `X-Forwarded-For` is appended to, as
every proxy does: its last entry is always the address the sidecar saw."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from sidecar.http import Headers, Request
from sidecar.vocab.headers import HOP_BY_HOP, REQUEST_ID_HEADER, connection_tokens

VIA = "1.1 sidecar"
# Hop-by-hop fields, plus framing: recomputed from the body actually forwarded.
_DROP = HOP_BY_HOP | {"content-length"}
# Client addresses remembered per preparer (verdicts are pure functions of the text).
_VERDICTS_MAX = 4096
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def new_request_id() -> str:
    # Uniqueness, not secrecy: the process-wide PRNG (seeded from urandom) avoids a
    # getrandom() syscall per request.
    # Bytes to hex, not a format spec: cheaper in the compiled build. The same bytes as
    # randbytes(16), without its interpreted frame.
    return random.getrandbits(128).to_bytes(16, "little").hex()


def _forwarded_value(value: str) -> str:
    # RFC 7239 §4: a token, or a quoted-string (host:port and IPv6 need quoting).
    if value and all(c in _TCHAR for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarded_element(client: str, scheme: str, host: str | None) -> str:
    """Our own `Forwarded` element: for=, host=, proto= (RFC 7239 §5)."""
    node = f"[{client}]" if ":" in client else client
    parts = [f"for={_forwarded_value(node)}"] if client else []
    if host:
        parts.append(f"host={_forwarded_value(host)}")
    parts.append(f"proto={scheme}")
    return ";".join(parts)


def prepare_request(request: Request, trusted: bool = False) -> None:
    """`trusted`: the client is a proxy listed in `trusted_proxies` (keep what it says)."""
    items = request.headers.items()
    named = connection_tokens(items) if any(k == "connection" for k, _ in items) else ()
    client = request.client_addr
    kept: list[tuple[str, str]] = []
    rid: str | None = None
    xff: str | None = None
    via: str | None = None
    host: str | None = None
    forwarded: str | None = None
    has_proto = has_fwd_host = False
    for k, v in items:
        if k in _DROP or k in named or k.startswith("proxy-"):
            continue
        if k == "via":
            # Replaced by one field at the end (first value extended), as Headers.set does.
            if via is None:
                via = v
            continue
        if k == "x-forwarded-for" and client:
            if xff is None:
                xff = v
            continue
        if k == "forwarded":
            # Rewritten at the end: ours alone, or (trusted) appended to what came.
            forwarded = v if forwarded is None else f"{forwarded}, {v}"
            continue
        if k == REQUEST_ID_HEADER:
            if rid is None:
                rid = v
        elif k == "host":
            if host is None:
                host = v
        elif k == "x-forwarded-proto":
            if not trusted:
                continue
            has_proto = True
        elif k == "x-forwarded-host":
            if not trusted:
                continue
            has_fwd_host = True
        kept.append((k, v))
    if not rid:
        rid = new_request_id()
        kept.append((REQUEST_ID_HEADER, rid))
    request.request_id = rid
    if client:
        kept.append(("x-forwarded-for", f"{xff}, {client}" if xff else client))
    if not has_proto:
        kept.append(("x-forwarded-proto", request.scheme))
    if host and not has_fwd_host:
        kept.append(("x-forwarded-host", host))
    if forwarded is not None:
        own = forwarded_element(client, request.scheme, host)
        kept.append(("forwarded", f"{forwarded}, {own}" if trusted else own))
    kept.append(("via", f"{via}, {VIA}" if via else VIA))
    if request.upgrade:
        # Hop-by-hop, but the next hop must see them to switch protocols (RFC 9110 §7.8).
        kept.append(("connection", "upgrade"))
        kept.append(("upgrade", request.upgrade))
    request.headers = Headers.from_lower(kept)


class RequestPreparer:
    """`prepare_request` with the listeners' `trusted_proxies`, built once from config (and
    swapped on reload). With no trusted proxies, the common case, it costs one check."""

    __slots__ = ("_networks", "_verdicts")

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._verdicts: dict[str, bool] = {}
        self.trust(trusted_proxies)

    def trust(self, trusted_proxies: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self._verdicts = {}

    def trusts(self, address: str) -> bool:
        if not self._networks or not address:
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._check(address)
            if len(self._verdicts) >= _VERDICTS_MAX:
                self._verdicts.clear()  # bounded: addresses come from the network
            self._verdicts[address] = verdict
        return verdict

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
        return any(ip.version == net.version and ip in net for net in self._networks)

    def __call__(self, request: Request) -> None:
        if self._networks:
            prepare_request(request, self.trusts(request.client_addr))
        else:
            prepare_request(request)
