"""The sidecar's own headers (x-request-id, x-sidecar-*), the gRPC ones several layers read,
and the hop-by-hop rules (RFC 9110 §7.6.1). Names only one module handles stay there: trace
context in sidecar/telemetry/propagation.py, forwarding headers in sidecar/proxy/prepare.py.

All lower case: `Headers` stores names lower-cased, so these compare with `==`."""

from __future__ import annotations

from typing import Final

# ---- the sidecar's own headers
REQUEST_ID_HEADER: Final = "x-request-id"
# The error code on a reply the sidecar made itself (sidecar/errors.py, fallback replies).
ERROR_HEADER: Final = "x-sidecar-error"
# "static" or "last_good" on a fallback reply.
FALLBACK_HEADER: Final = "x-sidecar-fallback"
# The attempt number on a retried request (2 for the first retry).
ATTEMPT_HEADER: Final = "x-sidecar-attempt"
# The caller's remaining deadline in ms, forwarded so the next hop gives up in time too.
EXPECTED_TIMEOUT_HEADER: Final = "x-sidecar-expected-timeout-ms"

# ---- gRPC
GRPC_TIMEOUT_HEADER: Final = "grpc-timeout"
GRPC_STATUS_HEADER: Final = "grpc-status"
GRPC_MESSAGE_HEADER: Final = "grpc-message"

# ---- hop-by-hop: meaningful for one connection only, never forwarded
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing is recomputed from the body we actually send.
FRAMING: Final = frozenset({"content-length", "transfer-encoding"})


def connection_tokens(items: list[tuple[str, str]]) -> frozenset[str]:
    tokens: set[str] = set()
    for k, v in items:
        if k == "connection":
            tokens.update(t.strip().lower() for t in v.split(",") if t.strip())
    return frozenset(tokens)


def end_to_end(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop fields: the fixed set, `Proxy-*`, and those named in `Connection`."""
    named = connection_tokens(items) if any(k == "connection" for k, _ in items) else frozenset()
    return [
        (k, v)
        for k, v in items
        if k not in HOP_BY_HOP and k not in named and not k.startswith("proxy-")
    ]
