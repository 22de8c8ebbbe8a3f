"""Header hygiene for forwarded requests and responses."""

from __future__ import annotations

HOP_BY_HOP = frozenset(
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
FRAMING = frozenset({"content-length", "transfer-encoding"})


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
