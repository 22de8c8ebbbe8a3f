"""Synthetic traces with known answers, in the exact Jaeger query-API JSON shape."""

from __future__ import annotations

import itertools
from typing import Any

from sidecar.diagnose.model import Trace, parse_jaeger

EPOCH_US = 1_700_000_000_000_000
_ids = itertools.count(1)


class TraceBuilder:
    """Times are in ms from the trace's start; ids are unique across builders."""

    def __init__(self, base_ms: float = 0.0) -> None:
        self.trace_id = f"{next(_ids):032x}"
        self.base_us = EPOCH_US + int(base_ms * 1000)
        self.spans: list[dict[str, Any]] = []
        self.services: dict[str, str] = {}

    def span(
        self,
        service: str,
        operation: str,
        start_ms: float,
        duration_ms: float,
        parent: str | None = None,
        kind: str = "server",
        tags: dict[str, Any] | None = None,
        follows_from: bool = False,
    ) -> str:
        span_id = f"{next(_ids):016x}"
        pid = self.services.setdefault(service, f"p{len(self.services) + 1}")
        refs = []
        if parent is not None:
            refs.append(
                {
                    "refType": "FOLLOWS_FROM" if follows_from else "CHILD_OF",
                    "traceID": self.trace_id,
                    "spanID": parent,
                }
            )
        all_tags = [{"key": "span.kind", "type": "string", "value": kind}]
        for key, value in (tags or {}).items():
            typ = (
                "bool"
                if isinstance(value, bool)
                else "int64"
                if isinstance(value, int)
                else "float64"
                if isinstance(value, float)
                else "string"
            )
            all_tags.append({"key": key, "type": typ, "value": value})
        self.spans.append(
            {
                "traceID": self.trace_id,
                "spanID": span_id,
                "operationName": operation,
                "references": refs,
                "startTime": self.base_us + int(start_ms * 1000),
                "duration": int(duration_ms * 1000),
                "tags": all_tags,
                "logs": [],
                "processID": pid,
                "warnings": None,
                "flags": 1,
            }
        )
        return span_id

    def call(
        self,
        parent: str,
        caller: str,
        upstream: str,
        operation: str,
        start_ms: float,
        duration_ms: float,
        attempt: int = 1,
        status: int | None = 200,
        error_type: str | None = None,
        callee_ms: float | None = None,
        callee_shift_ms: float = 0.0,
    ) -> tuple[str, str | None]:
        """Our sidecar's shape: a CLIENT span of the caller's sidecar (one per attempt) and,
        when the request arrived, the upstream sidecar's SERVER span inside it."""
        tags: dict[str, Any] = {
            "sidecar.upstream": upstream,
            "sidecar.attempt": attempt,
            "http.request.method": operation.split()[0],
            "server.address": upstream,
        }
        if status is not None:
            tags["http.response.status_code"] = status
        if error_type:
            tags["error.type"] = error_type
            tags["error"] = True
        client = self.span(caller, operation, start_ms, duration_ms, parent, "client", tags)
        if callee_ms == 0:
            return client, None
        inner = duration_ms - 0.4 if callee_ms is None else callee_ms
        server = self.span(
            upstream,
            operation,
            start_ms + 0.2 + callee_shift_ms,
            inner,
            client,
            "server",
            {"http.response.status_code": status or 200},
        )
        return client, server

    def jaeger(self) -> dict[str, Any]:
        return {
            "traceID": self.trace_id,
            "spans": list(self.spans),
            "processes": {
                pid: {"serviceName": svc, "tags": []} for svc, pid in self.services.items()
            },
            "warnings": None,
        }

    def trace(self) -> Trace:
        return parse_jaeger(self.jaeger())[0]


def jaeger_response(builders: list[TraceBuilder]) -> dict[str, Any]:
    data = [b.jaeger() for b in builders]
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}


ROOT_OP = "GET /context/{user_id}"
USER = ("user-service", "GET /users/{id}")
DOCS = ("document-service", "GET /documents/{id}")
RETR = ("retrieval-service", "POST /retrieve")


def bff(
    calls: list[tuple[tuple[str, str], float, float]],
    total_ms: float,
    base_ms: float = 0.0,
) -> TraceBuilder:
    """A bff request making `calls` = [((service, op), start_ms, duration_ms), ...]."""
    b = TraceBuilder(base_ms)
    root = b.span("bff", ROOT_OP, 0, total_ms, tags={"http.route": "/context/{user_id}"})
    for (service, op), start, duration in calls:
        b.call(root, "bff", service, op, start, duration)
    return b


def sequential_chain(n: int = 100) -> list[TraceBuilder]:
    """user 20 ms, then documents 60 ms (120 ms in the slowest 2 %), then retrieval 10 ms."""
    out = []
    for i in range(n):
        doc = 120.0 if i >= n - max(1, n // 50) else 60.0
        out.append(
            bff(
                [(USER, 1, 20), (DOCS, 22, doc), (RETR, 23 + doc, 10)],
                total_ms=35 + doc,
                base_ms=i * 1000,
            )
        )
    return out


def concurrent_fanout(n: int = 100) -> list[TraceBuilder]:
    out = []
    for i in range(n):
        doc = 120.0 if i >= n - max(1, n // 50) else 60.0
        out.append(
            bff([(USER, 1, 20), (DOCS, 1, doc), (RETR, 1, 10)], total_ms=3 + doc, base_ms=i * 1000)
        )
    return out


def mixed(n: int = 100) -> list[TraceBuilder]:
    """user first, then documents and retrieval together."""
    return [
        bff([(USER, 1, 20), (DOCS, 22, 60), (RETR, 22, 10)], total_ms=84, base_ms=i * 1000)
        for i in range(n)
    ]


def rebase(payload: dict[str, Any], now_us: int) -> dict[str, Any]:
    """Move every span so the newest trace ends just before `now_us` (for lookback windows)."""
    spans = [s for t in payload["data"] for s in t["spans"]]
    shift = now_us - 1_000_000 - max(s["startTime"] + s["duration"] for s in spans)
    for s in spans:
        s["startTime"] += shift
    return payload


def meshed(
    calls: list[tuple[tuple[str, str], float, float]],
    total_ms: float,
    base_ms: float = 0.0,
) -> TraceBuilder:
    """A bff request as the demo's sidecars record it (every service behind its own sidecar):
    each sidecar's inbound SERVER span wraps a CLIENT span to its local app (tagged with its own
    service as `sidecar.upstream`); each app call goes to the bff sidecar's outbound listener
    (a SERVER span) that makes the CLIENT call to the upstream's sidecar."""
    b = TraceBuilder(base_ms)
    root = b.span("bff", ROOT_OP, 0, total_ms, tags={"http.route": "/context/{user_id}"})
    app = b.span(
        "bff",
        ROOT_OP,
        0.1,
        total_ms - 0.2,
        root,
        "client",
        {"sidecar.upstream": "bff", "sidecar.attempt": 1, "server.address": "bff"},
    )
    for (service, op), start, duration in calls:
        out = b.span("bff", op, start, duration, app, "server", {"sidecar.direction": "outbound"})
        client = b.span(
            "bff",
            op,
            start + 0.1,
            duration - 0.2,
            out,
            "client",
            {"sidecar.upstream": service, "sidecar.attempt": 1, "server.address": service},
        )
        inbound = b.span(
            service,
            op,
            start + 0.2,
            duration - 0.4,
            client,
            "server",
            {"sidecar.direction": "inbound"},
        )
        b.span(
            service,
            op,
            start + 0.3,
            duration - 0.6,
            inbound,
            "client",
            {"sidecar.upstream": service, "sidecar.attempt": 1, "server.address": service},
        )
    return b


def repeats(
    calls: int,
    dur: float = 2.0,
    base_ms: float = 0.0,
    shift: float = 0.0,
    upstream: str = "cache",
    op: str = "GET /k",
    drop_server: bool = False,
) -> TraceBuilder:
    """bff → document-service, which calls `upstream` `calls` times one after the other.
    `shift`: document-service's clock is that many ms ahead (its whole subtree)."""
    b = TraceBuilder(base_ms)
    span = 3 + calls * (dur + 0.1)
    root = b.span("bff", ROOT_OP, 0, span + 4)
    _, server = b.call(root, "bff", *DOCS, 1, span + 2, callee_ms=span + 1.4, callee_shift_ms=shift)
    assert server is not None
    t = 2 + shift
    for _ in range(calls):
        b.call(server, "document-service", upstream, op, t, dur, callee_ms=0)
        t += dur + 0.1
    if drop_server:
        b.spans = [s for s in b.spans if s["spanID"] != server]
    return b
