"""From two scrapes of one sidecar to the rows of `sidecar top`: pure arithmetic, no I/O.

Rates are counter deltas over the time between the scrapes; latency percentiles are estimated
from histogram bucket deltas the way Prometheus' `histogram_quantile` does (linear interpolation
inside the bucket that holds the rank). A value that went down means the sidecar restarted (or
the series was recreated): as Prometheus' `rate()` does, its delta is then the new value."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sidecar.top.scrape import Labels, Scrape, ScrapeError

CLIENT = "http_client_request_duration_seconds"
SERVER = "http_server_request_duration_seconds"
RETRIES = "sidecar_retries_total"
REJECTED = "sidecar_requests_rejected_total"
INFLIGHT = "sidecar_inflight_requests"
BREAKER = "sidecar_circuit_breaker_state"
ENDPOINTS = "sidecar_upstream_endpoints"
RPC_CLIENT = "rpc_client_duration_seconds"
RPC_SERVER = "rpc_server_duration_seconds"

BREAKER_STATES = {0: "closed", 1: "half_open", 2: "open"}
BREAKER_RANK = {"open": 2, "half_open": 1}

# Row kinds: an upstream the local app calls, the local app behind the inbound listener, and
# one route template as received on the sidecar's listeners; for gRPC, one method called on an
# upstream and one method received.
UPSTREAM, INBOUND, ROUTE = "upstream", "inbound", "route"
RPC_OUT, RPC_IN = "rpc_out", "rpc_in"

GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
# The codes that are the callee's failure (OTel RPC conventions for a server span); the
# others (OK, NOT_FOUND, INVALID_ARGUMENT, ...) are answers, like an HTTP 4xx.
GRPC_FAILURES = frozenset({"2", "4", "12", "13", "14", "15"})
SORT_KEYS = ("health", "rps", "p99", "p50", "success", "name")


@dataclass(frozen=True)
class Row:
    admin: str
    service: str
    kind: str
    name: str
    rps: float
    success_rate: float | None  # None when there was no traffic in the window
    p50_s: float | None
    p99_s: float | None
    inflight: int | None = None
    breaker: str | None = None
    endpoints_healthy: int | None = None
    endpoints_ejected: int | None = None
    retries_per_s: float | None = None
    rejected_per_s: float | None = None
    # gRPC rows: calls per second by status name, most frequent first
    grpc_status: tuple[tuple[str, float], ...] | None = None


def _get(labels: Labels, key: str) -> str:
    for k, v in labels:
        if k == key:
            return v
    return ""


def _without(labels: Labels, key: str) -> Labels:
    return tuple(p for p in labels if p[0] != key)


def counter_deltas(
    prev: Mapping[Labels, float], cur: Mapping[Labels, float]
) -> dict[Labels, float]:
    """Per series: cur - prev, or cur when it went down (reset) or is new since `prev`."""
    out: dict[Labels, float] = {}
    for labels, value in cur.items():
        before = prev.get(labels)
        out[labels] = value if before is None or value < before else value - before
    return out


@dataclass
class HistogramDelta:
    """One group's observations in the window: cumulative bucket counts by upper bound, and
    how many of the observations were successes."""

    buckets: dict[float, float]
    count: float = 0.0
    ok: float = 0.0

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, sorted(self.buckets.items()))


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: `buckets` are (upper bound, cumulative count) sorted by bound and
    ending with +Inf. A rank in the +Inf bucket yields the largest finite bound."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower if len(buckets) > 1 else None
            in_bucket = cumulative - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
        lower, below = upper, cumulative
    return lower


def _is_success(labels: Labels) -> bool:
    # 4xx is the caller's mistake, not a failure of the callee (OTel, linkerd classify).
    return _get(labels, "error_type") == "" and not _get(
        labels, "http_response_status_code"
    ).startswith("5")


def _grpc_ok(labels: Labels) -> bool:
    return _get(labels, "rpc_grpc_status_code") not in GRPC_FAILURES


def grpc_status_name(code: str) -> str:
    n = int(code) if code.isdigit() else -1
    return GRPC_STATUS_NAMES[n] if 0 <= n < len(GRPC_STATUS_NAMES) else code


def histogram_deltas(
    prev: Scrape,
    cur: Scrape,
    name: str,
    group: Callable[[Labels], str | None],
    success: Callable[[Labels], bool] = _is_success,
) -> dict[str, HistogramDelta]:
    """Bucket and count deltas of histogram `name`, summed per group (`group` returns None to
    skip a series). A series whose count went down was reset: all its current buckets count."""
    counts_prev, counts_cur = prev.samples(f"{name}_count"), cur.samples(f"{name}_count")
    reset = {ls for ls, v in counts_cur.items() if v < counts_prev.get(ls, 0.0)}
    out: dict[str, HistogramDelta] = {}
    buckets_prev = prev.samples(f"{name}_bucket")
    for labels, value in cur.samples(f"{name}_bucket").items():
        series = _without(labels, "le")
        key = group(series)
        if key is None:
            continue
        before = 0.0 if series in reset else buckets_prev.get(labels, 0.0)
        le = float(_get(labels, "le"))
        h = out.setdefault(key, HistogramDelta({}))
        h.buckets[le] = h.buckets.get(le, 0.0) + max(0.0, value - before)
    for series, value in counts_cur.items():
        key = group(series)
        if key is None:
            continue
        before = 0.0 if series in reset else counts_prev.get(series, 0.0)
        delta = max(0.0, value - before)
        h = out.setdefault(key, HistogramDelta({}))
        h.count += delta
        if success(series):
            h.ok += delta
    return out


def _sum_by(deltas: Mapping[Labels, float], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in deltas.items():
        k = _get(labels, key)
        out[k] = out.get(k, 0.0) + value
    return out


def service_of(scrape: Scrape) -> str:
    """The `service` label this sidecar reports (one sidecar serves one service)."""
    for samples in scrape.series.values():
        for labels in samples:
            name = _get(labels, "service")
            if name:
                return name
    return scrape.admin


def _gauge(scrape: Scrape, name: str, **match: str) -> float | None:
    want = set(match.items())
    for labels, value in scrape.samples(name).items():
        if want <= set(labels):
            return value
    return None


def _breaker(cur: Scrape, upstream: str) -> str | None:
    if cur.breakers is not None and upstream in cur.breakers:
        return cur.breakers[upstream]
    # The gauge only exists after a first transition; the admin view knows every breaker.
    value = _gauge(cur, BREAKER, upstream=upstream)
    return BREAKER_STATES.get(int(value)) if value is not None else None


def _endpoints(cur: Scrape, upstream: str) -> tuple[int | None, int | None]:
    if cur.endpoints is not None and upstream in cur.endpoints:
        count = cur.endpoints[upstream]
        return count.healthy, count.ejected
    healthy = _gauge(cur, ENDPOINTS, upstream=upstream, state="healthy")
    ejected = _gauge(cur, ENDPOINTS, upstream=upstream, state="ejected")
    return (
        int(healthy) if healthy is not None else None,
        int(ejected) if ejected is not None else None,
    )


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def upstream_rows(prev: Scrape, cur: Scrape, dt: float) -> list[Row]:
    """One row per upstream the local app calls. A call is an attempt sent to the upstream or
    a request the sidecar refused on its behalf (circuit open, overloaded, no route…); the
    success rate is the share of calls that got a non-5xx answer from the upstream."""
    service = service_of(cur)

    def group(labels: Labels) -> str | None:
        upstream = _get(labels, "upstream")
        return upstream if upstream != service else None  # upstream == service: inbound hop

    attempts = histogram_deltas(prev, cur, CLIENT, group)
    retries = _sum_by(counter_deltas(prev.samples(RETRIES), cur.samples(RETRIES)), "upstream")
    rejected = _sum_by(counter_deltas(prev.samples(REJECTED), cur.samples(REJECTED)), "upstream")
    names = set(attempts) | set(retries) | set(rejected)
    names |= {_get(ls, "upstream") for ls in cur.samples(BREAKER)}
    names |= {_get(ls, "upstream") for ls in cur.samples(ENDPOINTS)}
    names |= {
        _get(ls, "upstream") for ls in cur.samples(INFLIGHT) if _get(ls, "direction") == "outbound"
    }
    names |= set(cur.breakers or ()) | set(cur.endpoints or ())
    names.discard("")
    names.discard(service)
    rows = []
    for name in sorted(names):
        h = attempts.get(name, HistogramDelta({}))
        calls = h.count + rejected.get(name, 0.0)
        healthy, ejected = _endpoints(cur, name)
        rows.append(
            Row(
                admin=cur.admin,
                service=service,
                kind=UPSTREAM,
                name=name,
                rps=calls / dt,
                success_rate=h.ok / calls if calls > 0 else None,
                p50_s=h.quantile(0.5),
                p99_s=h.quantile(0.99),
                inflight=_int(_gauge(cur, INFLIGHT, direction="outbound", upstream=name)),
                breaker=_breaker(cur, name),
                endpoints_healthy=healthy,
                endpoints_ejected=ejected,
                retries_per_s=retries.get(name, 0.0) / dt,
                rejected_per_s=rejected.get(name, 0.0) / dt,
            )
        )
    return rows


def inbound_rows(prev: Scrape, cur: Scrape, dt: float) -> list[Row]:
    """The local app as the inbound listener sees it (the client hop whose upstream is the
    service itself), and one row per route template received on the listeners."""
    service = service_of(cur)
    app = histogram_deltas(
        prev, cur, CLIENT, lambda ls: service if _get(ls, "upstream") == service else None
    )

    def row(kind: str, name: str, h: HistogramDelta, inflight: int | None = None) -> Row:
        return Row(
            admin=cur.admin,
            service=service,
            kind=kind,
            name=name,
            rps=h.count / dt,
            success_rate=h.ok / h.count if h.count > 0 else None,
            p50_s=h.quantile(0.5),
            p99_s=h.quantile(0.99),
            inflight=inflight,
        )

    inflight = _int(_gauge(cur, INFLIGHT, direction="inbound", upstream=""))
    rows = [row(INBOUND, name, h, inflight) for name, h in app.items()]
    routes = histogram_deltas(prev, cur, SERVER, lambda ls: _get(ls, "http_route") or None)
    rows += [row(ROUTE, name, h) for name, h in sorted(routes.items())]
    return rows


def _method(labels: Labels) -> str:
    return f"{_get(labels, 'rpc_service')}/{_get(labels, 'rpc_method')}"


def _status_rates(
    prev: Scrape, cur: Scrape, name: str, group: Callable[[Labels], str | None], dt: float
) -> dict[str, tuple[tuple[str, float], ...]]:
    """Per group: calls per second by gRPC status name, most frequent first."""
    deltas = counter_deltas(prev.samples(f"{name}_count"), cur.samples(f"{name}_count"))
    by_group: dict[str, dict[str, float]] = {}
    for labels, delta in deltas.items():
        key = group(labels)
        if key is None or delta <= 0:
            continue
        status = grpc_status_name(_get(labels, "rpc_grpc_status_code"))
        counts = by_group.setdefault(key, {})
        counts[status] = counts.get(status, 0.0) + delta / dt
    return {
        key: tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        for key, counts in by_group.items()
    }


def rpc_rows(prev: Scrape, cur: Scrape, dt: float) -> list[Row]:
    """gRPC methods, from the RPC histograms: one row per (upstream, method) the local app
    calls and one per method it serves, with calls per status code. A call succeeded unless
    its status is one of the callee's failures (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED...)."""
    service = service_of(cur)

    def called(labels: Labels) -> str | None:
        upstream = _get(labels, "upstream")
        return f"{upstream} {_method(labels)}" if upstream and upstream != service else None

    def served(labels: Labels) -> str | None:
        return _method(labels) if _get(labels, "rpc_method") else None

    rows = []
    for kind, name, group in ((RPC_OUT, RPC_CLIENT, called), (RPC_IN, RPC_SERVER, served)):
        statuses = _status_rates(prev, cur, name, group, dt)
        for key, h in sorted(histogram_deltas(prev, cur, name, group, _grpc_ok).items()):
            rows.append(
                Row(
                    admin=cur.admin,
                    service=service,
                    kind=kind,
                    name=key,
                    rps=h.count / dt,
                    success_rate=h.ok / h.count if h.count > 0 else None,
                    p50_s=h.quantile(0.5),
                    p99_s=h.quantile(0.99),
                    grpc_status=statuses.get(key, ()),
                )
            )
    return rows


def rows_between(prev: Scrape, cur: Scrape) -> list[Row]:
    """All rows of one sidecar for the window between two of its scrapes."""
    dt = cur.at - prev.at
    if dt <= 0:
        raise ValueError("the second scrape must be later than the first")
    return upstream_rows(prev, cur, dt) + inbound_rows(prev, cur, dt) + rpc_rows(prev, cur, dt)


def _health_key(r: Row) -> tuple[float, int, int, float, float, str, str, str]:
    # What hurts most first: failing calls, then open breakers and ejected endpoints (which
    # hurt even while traffic is shed), then slow calls; idle rows sink to the bottom.
    return (
        r.success_rate if r.success_rate is not None else 1.0,
        -BREAKER_RANK.get(r.breaker or "", 0),
        -(r.endpoints_ejected or 0),
        -(r.p99_s if r.p99_s is not None else -1.0),
        -r.rps,
        r.service,
        r.kind,
        r.name,
    )


def sort_rows(rows: Iterable[Row], by: str = "health") -> list[Row]:
    def name(r: Row) -> tuple[str, str, str]:
        return (r.service, r.kind, r.name)

    if by == "health":
        return sorted(rows, key=_health_key)
    if by == "rps":
        return sorted(rows, key=lambda r: (-r.rps, name(r)))
    if by in ("p99", "p50"):
        attr = f"{by}_s"
        return sorted(rows, key=lambda r: (-(getattr(r, attr) or -1.0), name(r)))
    if by == "success":
        return sorted(
            rows,
            key=lambda r: (r.success_rate if r.success_rate is not None else 2.0, name(r)),
        )
    if by == "name":
        return sorted(rows, key=name)
    raise ValueError(f"unknown sort key {by!r}; one of {', '.join(SORT_KEYS)}")


@dataclass(frozen=True)
class Snapshot:
    rows: list[Row]
    errors: list[ScrapeError]
    admins: list[str]
    window_s: float | None  # the longest window a row's rates cover; None before two scrapes

    @property
    def reachable(self) -> int:
        return len(self.admins) - len(self.errors)


class Tracker:
    """Keeps each sidecar's latest good scrape and turns the next one into rows. A failed
    scrape keeps the old one, so the first good scrape after an outage covers the whole gap."""

    def __init__(self, admins: Iterable[str], sort: str = "health") -> None:
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}; one of {', '.join(SORT_KEYS)}")
        self.admins = list(admins)
        self.sort = sort
        self._last: dict[str, Scrape] = {}

    def update(self, results: Iterable[Scrape | ScrapeError]) -> Snapshot:
        rows: list[Row] = []
        errors: list[ScrapeError] = []
        window: float | None = None
        for result in results:
            if isinstance(result, ScrapeError):
                errors.append(result)
                continue
            prev = self._last.get(result.admin)
            if prev is not None and result.at > prev.at:
                rows.extend(rows_between(prev, result))
                window = max(window or 0.0, result.at - prev.at)
            self._last[result.admin] = result
        return Snapshot(sort_rows(rows, self.sort), errors, self.admins, window)
