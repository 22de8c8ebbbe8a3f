"""What every request gets before the layer stack sees it: hop-by-hop stripping, forwarding
headers, a request id. Done once at the listener so every layer sees clean headers.

This runs on every request, so it is one pass over the fields rather than a filter followed by
get/set calls that each rescan and rebuild the list."""

from __future__ import annotations

import random

from sidecar.http import Headers, Request
from sidecar.proxy.hygiene import HOP_BY_HOP, connection_tokens

VIA = "1.1 sidecar"
# Hop-by-hop fields, plus framing: recomputed from the body actually forwarded.
_DROP = HOP_BY_HOP | {"content-length"}


def new_request_id() -> str:
    # Uniqueness, not secrecy: the process-wide PRNG (seeded from urandom) avoids a
    # getrandom() syscall per request.
    return f"{random.getrandbits(128):032x}"


def prepare_request(request: Request) -> None:
    items = request.headers.items()
    named = connection_tokens(items) if any(k == "connection" for k, _ in items) else ()
    client = request.client_addr
    kept: list[tuple[str, str]] = []
    rid: str | None = None
    xff: str | None = None
    via: str | None = None
    host: str | None = None
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
        if k == "x-request-id":
            if rid is None:
                rid = v
        elif k == "host":
            if host is None:
                host = v
        elif k == "x-forwarded-proto":
            has_proto = True
        elif k == "x-forwarded-host":
            has_fwd_host = True
        kept.append((k, v))
    if not rid:
        rid = new_request_id()
        kept.append(("x-request-id", rid))
    request.request_id = rid
    if client:
        kept.append(("x-forwarded-for", f"{xff}, {client}" if xff else client))
    if not has_proto:
        kept.append(("x-forwarded-proto", request.scheme))
    if host and not has_fwd_host:
        kept.append(("x-forwarded-host", host))
    kept.append(("via", f"{via}, {VIA}" if via else VIA))
    if request.upgrade:
        # Hop-by-hop, but the next hop must see them to switch protocols (RFC 9110 §7.8).
        kept.append(("connection", "upgrade"))
        kept.append(("upgrade", request.upgrade))
    request.headers = Headers.from_lower(kept)
