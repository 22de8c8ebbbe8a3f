"""Generate the Grafana dashboards in this folder from one description, so the three dashboards
share their datasources, variables and query conventions and cannot drift apart.

    python dashboards/generate.py           # rewrite dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if the committed JSON is out of date

Every query uses only the metric names of DESIGN §7 (tests/integration/test_dashboards.py
enforces it, and tests/integration/test_prometheus_scrape.py runs every query against a real
Prometheus scraping a real sidecar). Datasources are referenced by the fixed uids that
compose/grafana/provisioning/datasources/datasources.yaml provisions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PROMETHEUS_UID = "sidecar-prometheus"
JAEGER_UID = "sidecar-jaeger"
PROM = {"type": "prometheus", "uid": PROMETHEUS_UID}

HERE = Path(__file__).resolve().parent

# Selectors every panel shares. Variables are multi-value with an `.*` "All", hence `=~`.
SVC = 'service=~"$service"'
UP = 'service=~"$service", upstream=~"$upstream"'
RI = "[$__rate_interval]"
SIDECAR_FAILED = ', error_type!=""'  # server: the sidecar made the reply; client: attempt failed

Json = dict[str, Any]


# ---------------------------------------------------------------- building blocks


def target(expr: str, legend: str = "", *, exemplar: bool = False, instant: bool = False) -> Json:
    t: Json = {
        "datasource": PROM,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "exemplar": exemplar,
    }
    if instant:
        t["format"] = "table"
    return t


def rate(metric: str, selector: str) -> str:
    return f"rate({metric}{{{selector}}}{RI})"


def ratio_or_zero(num: str, den: str, by: str) -> str:
    """num/den per `by`, showing 0 (not "No data") for groups that have traffic but no errors."""
    return f"(sum by ({by}) ({num}) or sum by ({by}) ({den}) * 0) / sum by ({by}) ({den})"


def quantile(q: float, metric: str, selector: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RI})))"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, and numbers them."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
            }
        )
        self._y += 1

    def add(self, panel: Json, w: int = 12, h: int = 8) -> None:
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": w, "h": h}
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
        self._x = 0
        self._row_h = 0

    def numbered(self) -> list[Json]:
        for i, panel in enumerate(self.panels, start=1):
            panel["id"] = i
            for j, t in enumerate(panel.get("targets", [])):
                t["refId"] = chr(ord("A") + j)
        return self.panels


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "short",
    *,
    stack: bool = False,
    overrides: list[Json] | None = None,
) -> Json:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom},
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, description: str, expr: str, unit: str, legend: str = "") -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": [target(expr, legend)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def variables() -> Json:
    def var(name: str, label: str, query: str) -> Json:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": PROM,
            "definition": query,
            "query": query,
            "refresh": 2,  # on time range change: new services/upstreams appear by themselves
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return {
        "list": [
            var(
                "service",
                "Service",
                "label_values(http_server_request_duration_seconds_count, service)",
            ),
            var(
                "upstream",
                "Upstream",
                "label_values(http_client_request_duration_seconds_count"
                '{service=~"$service"}, upstream)',
            ),
        ]
    }


def dashboard(uid: str, title: str, description: str, layout: Layout) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["sidecar"],
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: line panels up when hunting a spike
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "templating": variables(),
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["sidecar"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "title": "sidecar",
            }
        ],
        "panels": layout.numbered(),
    }


# ---------------------------------------------------------------- the dashboards

SERVER = "http_server_request_duration_seconds"
CLIENT = "http_client_request_duration_seconds"
RPC_SERVER = "rpc_server_duration_seconds"
RPC_CLIENT = "rpc_client_duration_seconds"
GRPC_METHOD = "{{rpc_service}}/{{rpc_method}}"  # a legend


def overview() -> Json:
    lay = Layout()
    lay.row("Inbound: requests received by $service (per route)")
    lay.add(
        stat(
            "Request rate",
            "Requests per second received on the sidecar's listeners.",
            f"sum({rate(SERVER + '_count', SVC)})",
            "reqps",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Error ratio (5xx)",
            "Share of received requests answered with a 5xx, by the app or by the sidecar.",
            ratio_or_zero(
                rate(SERVER + "_count", SVC + ', http_response_status_code=~"5.."'),
                rate(SERVER + "_count", SVC),
                "service",
            ),
            "percentunit",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "p99 latency",
            "99th percentile time to response headers over all routes.",
            quantile(0.99, SERVER, SVC, "service"),
            "s",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Replies made by the sidecar",
            "Requests per second the sidecar answered itself (error_type set: no_route, "
            "circuit_open, upstream_timeout, ...) instead of passing on the app's reply.",
            f"sum({rate(SERVER + '_count', SVC + SIDECAR_FAILED)}) or vector(0)",
            "reqps",
        ),
        w=6,
        h=4,
    )
    lay.add(
        timeseries(
            "Rate by route",
            "Requests per second per route template (routes outside metrics.route_templates "
            "are counted as `other`).",
            [
                target(
                    f"sum by (http_route) ({rate(SERVER + '_count', SVC)})",
                    "{{http_route}}",
                )
            ],
            "reqps",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Errors by route",
            "Share of each route's requests that ended in a 5xx.",
            [
                target(
                    ratio_or_zero(
                        rate(SERVER + "_count", SVC + ', http_response_status_code=~"5.."'),
                        rate(SERVER + "_count", SVC),
                        "http_route",
                    ),
                    "{{http_route}}",
                )
            ],
            "percentunit",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Latency by route (p50 / p99)",
            "Time to response headers per route. Dots are exemplars: click one to open its "
            "trace in Jaeger.",
            [
                target(quantile(0.5, SERVER, SVC, "http_route"), "p50 {{http_route}}"),
                target(
                    quantile(0.99, SERVER, SVC, "http_route"),
                    "p99 {{http_route}}",
                    exemplar=True,
                ),
            ],
            "s",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Responses by status",
            "Received requests per second by status code; error_type names replies the "
            "sidecar made itself.",
            [
                target(
                    "sum by (http_response_status_code, error_type) "
                    f"({rate(SERVER + '_count', SVC)})",
                    "{{http_response_status_code}} {{error_type}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=24,
    )

    lay.row("Outbound: calls from $service to $upstream (per upstream)")
    lay.add(
        timeseries(
            "Attempts by upstream",
            "Attempts per second to each upstream (a retried request counts once per attempt).",
            [target(f"sum by (upstream) ({rate(CLIENT + '_count', UP)})", "{{upstream}}")],
            "reqps",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Failed attempts by upstream",
            "Share of attempts that failed: a 5xx reply, or no reply at all (connect failure, "
            "reset, timeout).",
            [
                target(
                    ratio_or_zero(
                        rate(CLIENT + "_count", UP + SIDECAR_FAILED),
                        rate(CLIENT + "_count", UP),
                        "upstream",
                    ),
                    "{{upstream}}",
                )
            ],
            "percentunit",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Latency by upstream (p50 / p99)",
            "Per-attempt time to response headers. Dots are exemplars linking to the trace.",
            [
                target(quantile(0.5, CLIENT, UP, "upstream"), "p50 {{upstream}}"),
                target(quantile(0.99, CLIENT, UP, "upstream"), "p99 {{upstream}}", exemplar=True),
            ],
            "s",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Failures by upstream and type",
            "What went wrong, per upstream: a 5xx status or one of the sidecar's error codes.",
            [
                target(
                    "sum by (upstream, error_type) "
                    f"({rate(CLIENT + '_count', UP + SIDECAR_FAILED)})",
                    "{{upstream}} {{error_type}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Mean latency by upstream",
            "Average attempt duration; compare with the percentiles to spot long tails.",
            [
                target(
                    f"sum by (upstream) ({rate(CLIENT + '_sum', UP)}) / "
                    f"sum by (upstream) ({rate(CLIENT + '_count', UP)})",
                    "{{upstream}}",
                )
            ],
            "s",
        ),
        w=12,
    )
    grpc_row(lay)
    return dashboard(
        "sidecar-overview",
        "Sidecar / Service overview",
        "Rate, errors and duration per inbound route and per upstream, with exemplars to traces.",
        lay,
    )


def grpc_row(lay: Layout) -> None:
    """gRPC calls by method and status code, from the RPC histograms (OTel RPC conventions).
    The HTTP panels above count the same calls by HTTP status, where a gRPC failure is
    usually a 200."""
    method = "rpc_service, rpc_method"
    lay.row("gRPC: methods $service serves and calls, by status code")
    lay.add(
        timeseries(
            "gRPC calls received by method and status",
            "Inbound gRPC calls per second per method and grpc-status code (0 OK, 4 "
            "DEADLINE_EXCEEDED, 14 UNAVAILABLE, ...).",
            [
                target(
                    f"sum by ({method}, rpc_grpc_status_code) "
                    f"({rate(RPC_SERVER + '_count', SVC)})",
                    "{{rpc_service}}/{{rpc_method}} {{rpc_grpc_status_code}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "gRPC server latency by method (p50 / p99)",
            "Inbound gRPC call duration to the end of the response stream (trailers).",
            [
                target(quantile(q, RPC_SERVER, SVC, method), f"{p} {GRPC_METHOD}")
                for q, p in ((0.5, "p50"), (0.99, "p99"))
            ],
            "s",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "gRPC calls to upstreams by method and status",
            "Outbound gRPC attempts per second per upstream, method and grpc-status code.",
            [
                target(
                    f"sum by (upstream, {method}, rpc_grpc_status_code) "
                    f"({rate(RPC_CLIENT + '_count', UP)})",
                    "{{upstream}} {{rpc_service}}/{{rpc_method}} {{rpc_grpc_status_code}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "gRPC calls to upstreams not OK",
            "Share of outbound gRPC attempts per upstream and method whose status was not OK.",
            [
                target(
                    ratio_or_zero(
                        rate(RPC_CLIENT + "_count", UP + ', rpc_grpc_status_code!="0"'),
                        rate(RPC_CLIENT + "_count", UP),
                        f"upstream, {method}",
                    ),
                    "{{upstream}} {{rpc_service}}/{{rpc_method}}",
                )
            ],
            "percentunit",
        ),
        w=12,
    )


def resilience() -> Json:
    lay = Layout()
    lay.row("Circuit breakers")
    lay.add(
        {
            "type": "state-timeline",
            "title": "Breaker state",
            "description": "Per upstream: closed (traffic flows), half-open (probing), "
            "open (calls rejected with 503 circuit_open).",
            "datasource": PROM,
            "targets": [
                target(
                    f"max by (upstream) (sidecar_circuit_breaker_state{{{UP}}})",
                    "{{upstream}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "mappings": [
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "closed", "color": "green", "index": 0},
                                "1": {"text": "half-open", "color": "yellow", "index": 1},
                                "2": {"text": "open", "color": "red", "index": 2},
                            },
                        }
                    ],
                    "color": {"mode": "thresholds"},
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "yellow", "value": 1},
                            {"color": "red", "value": 2},
                        ],
                    },
                },
                "overrides": [],
            },
            "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9},
        },
        w=12,
    )
    lay.add(
        timeseries(
            "Breaker transitions",
            "State changes per interval; many in a row means the breaker is flapping.",
            [
                target(
                    "sum by (upstream, to) "
                    f"(increase(sidecar_circuit_breaker_transitions_total{{{UP}}}{RI}))",
                    "{{upstream}} → {{to}}",
                )
            ],
            "short",
        ),
        w=12,
    )

    lay.row("Retries")
    lay.add(
        timeseries(
            "Retries by reason",
            "Retries per second and why they were made (connect_failure, reset, timeout, "
            "a 5xx status).",
            [
                target(
                    f"sum by (upstream, reason) ({rate('sidecar_retries_total', UP)})",
                    "{{upstream}} {{reason}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Retry share of attempts",
            "Retries as a share of all attempts; the retry budget caps it near budget_ratio.",
            [
                target(
                    f"(sum by (upstream) ({rate('sidecar_retries_total', UP)}) or "
                    f"sum by (upstream) ({rate(CLIENT + '_count', UP)}) * 0) / "
                    f"sum by (upstream) ({rate(CLIENT + '_count', UP)})",
                    "{{upstream}}",
                )
            ],
            "percentunit",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Retry budget exhausted",
            "Retries not made because the budget was spent: the upstream is failing more "
            "than retries can hide.",
            [
                target(
                    f"sum by (upstream) ({rate('sidecar_retry_budget_exhausted_total', UP)})",
                    "{{upstream}}",
                )
            ],
            "reqps",
        ),
        w=8,
    )

    lay.row("Rejections and fallbacks")
    lay.add(
        timeseries(
            "Rejections by reason",
            "Requests the sidecar answered itself without calling the upstream "
            "(circuit_open, overloaded, no_healthy_endpoints, deadline_exceeded, no_route).",
            [
                target(
                    f"sum by (upstream, reason) ({rate('sidecar_requests_rejected_total', UP)})",
                    "{{upstream}} {{reason}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Fallbacks served",
            "Replies served from `fallback` (static or last_good) instead of an error.",
            [
                target(
                    f"sum by (upstream, kind, reason) ({rate('sidecar_fallbacks_total', UP)})",
                    "{{upstream}} {{kind}} ({{reason}})",
                )
            ],
            "reqps",
            stack=True,
        ),
        w=12,
    )

    lay.row("Endpoints and discovery")
    lay.add(
        timeseries(
            "Endpoints: healthy vs ejected",
            "Known endpoints per upstream; ejected ones were taken out by outlier detection "
            "(consecutive failures) and come back after their ejection time.",
            [
                target(
                    f"sum by (upstream, state) (sidecar_upstream_endpoints{{{UP}}})",
                    "{{upstream}} {{state}}",
                )
            ],
            "short",
            stack=True,
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Discovery age",
            "Seconds since discovery last delivered an endpoint update per upstream and source. "
            "With static config it only grows; with Consul, a long age while errors rise means "
            "the sidecar is serving stale endpoints.",
            [
                target(
                    "max by (upstream, source) "
                    f"(time() - sidecar_discovery_last_update_timestamp_seconds{{{UP}}})",
                    "{{upstream}} ({{source}})",
                )
            ],
            "s",
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Discovery errors",
            "Failed discovery queries per second by source (e.g. Consul unreachable). The last "
            "known endpoints stay in use until discovery.consul.stale_after.",
            [
                target(
                    f"sum by (source) ({rate('sidecar_discovery_errors_total', SVC)})",
                    "{{source}}",
                )
            ],
            "reqps",
        ),
        w=8,
    )
    return dashboard(
        "sidecar-resilience",
        "Sidecar / Resilience",
        "Circuit breakers, retries and their budget, rejections, fallbacks, outlier ejection "
        "and discovery freshness.",
        lay,
    )


# Attaches the `service` label to metrics that carry none (they are per process): every
# sidecar exports exactly one service, and its server histogram names it.
SERVICE_OF_INSTANCE = (
    "on (job, instance) group_left (service) "
    f"group by (job, instance, service) ({SERVER}_count{{{SVC}}})"
)


def internals() -> Json:
    lay = Layout()
    lay.row("What the hop costs")
    for q in (0.5, 0.9, 0.99):
        lay.add(
            stat(
                f"Proxy overhead p{int(q * 100)}",
                "Time spent inside the sidecar itself (total minus waiting on the upstream), "
                "over both directions.",
                quantile(q, "sidecar_proxy_overhead_seconds", SVC, "service"),
                "s",
            ),
            w=8,
            h=4,
        )
    lay.add(
        timeseries(
            "Proxy overhead by direction",
            "p50/p99 of the sidecar's own time per request, inbound and outbound.",
            [
                target(
                    quantile(0.5, "sidecar_proxy_overhead_seconds", SVC, "direction"),
                    "p50 {{direction}}",
                ),
                target(
                    quantile(0.99, "sidecar_proxy_overhead_seconds", SVC, "direction"),
                    "p99 {{direction}}",
                ),
                target(
                    f"sum by (direction) ({rate('sidecar_proxy_overhead_seconds_sum', SVC)}) / "
                    f"sum by (direction) ({rate('sidecar_proxy_overhead_seconds_count', SVC)})",
                    "mean {{direction}}",
                ),
            ],
            "s",
        ),
        w=12,
    )
    lay.add(
        {
            "type": "heatmap",
            "title": "Proxy overhead distribution",
            "description": "Where the sidecar's own time falls, bucket by bucket (50 µs … 50 ms).",
            "datasource": PROM,
            "targets": [
                {
                    **target(
                        "sum by (le) "
                        f"(increase(sidecar_proxy_overhead_seconds_bucket{{{SVC}}}{RI}))",
                        "{{le}}",
                    ),
                    "format": "heatmap",
                }
            ],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {
                "calculate": False,
                "yAxis": {"unit": "s"},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1,
            },
        },
        w=12,
    )

    lay.row("Load and health of the process")
    lay.add(
        timeseries(
            "In-flight requests",
            "Requests in flight on each listener (upstream empty) and attempts in flight to "
            "each upstream; a steady climb means something is not answering.",
            [
                target(
                    f"sum by (direction, upstream) (sidecar_inflight_requests{{{SVC}}})",
                    "{{direction}} {{upstream}}",
                )
            ],
            "short",
        ),
        w=12,
    )
    lay.add(
        timeseries(
            "Spans dropped",
            "Finished spans not exported (export queue full or the collector failing): traces "
            "in Jaeger are incomplete while this is above zero.",
            [
                target(
                    "sum by (service) "
                    f"(rate(sidecar_spans_dropped_total{RI}) * {SERVICE_OF_INSTANCE})",
                    "{{service}}",
                )
            ],
            "short",
        ),
        w=12,
    )
    lay.add(
        {
            "type": "table",
            "title": "Build info",
            "description": "Which sidecar version each instance runs.",
            "datasource": PROM,
            "targets": [
                target(
                    "group by (service, instance, version) "
                    f"(sidecar_build_info * {SERVICE_OF_INSTANCE})",
                    instant=True,
                )
            ],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True},
            "transformations": [
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True}},
                }
            ],
        },
        w=24,
        h=6,
    )
    return dashboard(
        "sidecar-internals",
        "Sidecar / Internals",
        "What the sidecar itself costs and carries: proxy overhead, in-flight requests, "
        "dropped spans, versions.",
        lay,
    )


DASHBOARDS = {
    "sidecar-overview.json": overview,
    "sidecar-resilience.json": resilience,
    "sidecar-internals.json": internals,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
