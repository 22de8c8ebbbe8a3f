"""The demo's gRPC hop as the sidecars counted it: calls per method and status code, read from
each sidecar's `rpc_client_duration_seconds` (the caller's side, every attempt) and
`rpc_server_duration_seconds` (the callee's side) on its admin `/metrics`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# gRPC status names, for people reading the demo's output (the label carries the number).
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
_SIDES = {"rpc_client_duration_seconds": "client", "rpc_server_duration_seconds": "server"}


def status_name(code: str) -> str:
    return STATUS_NAMES[int(code)] if code.isdigit() and int(code) < len(STATUS_NAMES) else code


@dataclass(frozen=True)
class RpcCount:
    side: str  # "client": counted by the caller's sidecar; "server": by the callee's
    service: str  # the sidecar's service
    upstream: str  # the called service (client side); "" on the server side
    method: str  # package.Service/Method
    status: str  # e.g. "OK", "UNAVAILABLE"
    calls: int

    def as_json(self) -> dict[str, object]:
        return {
            "side": self.side,
            "service": self.service,
            "upstream": self.upstream,
            "method": self.method,
            "status": self.status,
            "calls": self.calls,
        }


def parse_counts(text: str) -> list[RpcCount]:
    """The rpc histograms' `_count` samples in one /metrics page."""
    out: list[RpcCount] = []
    for family in text_string_to_metric_families(text):
        side = _SIDES.get(family.name)
        if side is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_count") or sample.value <= 0:
                continue
            lb = sample.labels
            out.append(
                RpcCount(
                    side,
                    lb.get("service", ""),
                    lb.get("upstream", ""),
                    f"{lb.get('rpc_service', '')}/{lb.get('rpc_method', '')}",
                    status_name(lb.get("rpc_grpc_status_code", "")),
                    int(sample.value),
                )
            )
    return out


async def collect(session: aiohttp.ClientSession, admin_urls: Iterable[str]) -> list[RpcCount]:
    """Every sidecar's gRPC counts; a sidecar that does not answer contributes none."""
    counts: list[RpcCount] = []
    for url in admin_urls:
        try:
            async with session.get(f"{url}/metrics") as resp:
                if resp.status == 200:
                    counts.extend(parse_counts(await resp.text()))
        except (aiohttp.ClientError, TimeoutError):
            continue
    return sorted(counts, key=lambda c: (c.side, c.service, c.method, c.status))


def short_method(method: str) -> str:
    """`Retrieval/Retrieve` for `demo.retrieval.v1.Retrieval/Retrieve`: fits a terminal."""
    service, _, name = method.partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def rows(counts: Sequence[RpcCount]) -> list[tuple[str, str, str, str, str]]:
    """(sidecar, side, method, status, calls): each caller's sidecar, then each callee's.
    A callee sidecar's own forwarding to its app (client side, upstream = itself) repeats
    its server side and is left out."""
    shown = [c for c in counts if not (c.side == "client" and c.upstream == c.service)]
    ordered = sorted(shown, key=lambda c: (c.side != "client", c.service, c.method, c.status))
    return [(c.service, c.side, short_method(c.method), c.status, str(c.calls)) for c in ordered]
