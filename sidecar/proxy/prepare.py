"""What every request gets before the layer stack sees it: hop-by-hop stripping, forwarding
headers, a request id. Done once at the listener so every layer sees clean headers."""

from __future__ import annotations

import os

from sidecar.http import Headers, Request
from sidecar.proxy.hygiene import end_to_end

VIA = "1.1 sidecar"


def new_request_id() -> str:
    return os.urandom(16).hex()


def prepare_request(request: Request) -> None:
    items = [(k, v) for k, v in end_to_end(request.headers.items()) if k != "content-length"]
    headers = Headers.from_lower(items)
    rid = headers.get("x-request-id")
    if not rid:
        rid = new_request_id()
        headers.add("x-request-id", rid)
    request.request_id = rid
    if request.client_addr:
        xff = headers.get("x-forwarded-for")
        headers.set(
            "x-forwarded-for", f"{xff}, {request.client_addr}" if xff else request.client_addr
        )
    if "x-forwarded-proto" not in headers:
        headers.add("x-forwarded-proto", request.scheme)
    host = headers.get("host")
    if host and "x-forwarded-host" not in headers:
        headers.add("x-forwarded-host", host)
    via = headers.get("via")
    headers.set("via", f"{via}, {VIA}" if via else VIA)
    request.headers = headers
