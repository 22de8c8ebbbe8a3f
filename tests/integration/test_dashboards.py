"""The Grafana dashboards (dashboards/*.json) against what the sidecar really exports and what
compose provisions: metric names, PromQL syntax (promtool), datasource uids, variables.

A panel that names a metric the sidecar does not export fails here; whether every query also
returns data from a live sidecar is tests/integration/test_prometheus_scrape.py's job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.telemetry.metrics import Metrics
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROVISIONING = ROOT / "compose" / "grafana" / "provisioning"

# DESIGN §7, by kind. The registry must export exactly these (test below), and dashboards may
# use only these (with the suffixes Prometheus exposes them under).
DESIGN_METRICS = {
    "http_server_request_duration_seconds": "histogram",
    "http_client_request_duration_seconds": "histogram",
    "sidecar_upstream_endpoints": "gauge",
    "sidecar_circuit_breaker_state": "gauge",
    "sidecar_circuit_breaker_transitions_total": "counter",
    "sidecar_retries_total": "counter",
    "sidecar_retry_budget_exhausted_total": "counter",
    "sidecar_requests_rejected_total": "counter",
    "sidecar_fallbacks_total": "counter",
    "sidecar_inflight_requests": "gauge",
    "sidecar_discovery_last_update_timestamp_seconds": "gauge",
    "sidecar_discovery_errors_total": "counter",
    "sidecar_proxy_overhead_seconds": "histogram",
    "sidecar_spans_dropped_total": "counter",
    "sidecar_build_info": "gauge",
    "sidecar_health_checks_total": "counter",
    "sidecar_upgrades_total": "counter",
    "sidecar_upgrades_active": "gauge",
    "sidecar_tunnel_bytes_total": "counter",
    # Beyond the contract: how long tunnels stay open, and CONNECTs that could not connect.
    "sidecar_tunnel_duration_seconds": "histogram",
    "sidecar_tunnel_connect_errors_total": "counter",
    # gRPC calls: the HTTP histograms' rpc_* labels live on their own histograms, so the
    # HTTP series keep their shape (see README, HTTP/2 and gRPC).
    "rpc_server_duration_seconds": "histogram",
    "rpc_client_duration_seconds": "histogram",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


# ---------------------------------------------------------------- helpers (used by the scrape test too)


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def variable_selector(query: str) -> str:
    """`label_values(metric{...}, label)` → `metric{...}` (what the variable queries)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    assert m, f"unexpected variable query {query!r}"
    return m.group(1)


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for panel in panels(dashboard):
        for t in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} target {t.get('refId')}", t["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            out.append((f"variable {var['name']}", variable_selector(var["query"])))
    return out


def all_queries() -> list[tuple[str, str, str]]:
    return [(name, where, q) for name, d in load_dashboards().items() for where, q in queries(d)]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (`$x`, `${x}`) as Grafana would before sending the query."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects. Drops strings, label matchers, ranges,
    grouping label lists, variables, functions/aggregations (an identifier followed by `(`)
    and keywords; what remains are the metric names."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{\w+\}|\$\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def exposed_names(kinds: dict[str, str]) -> set[str]:
    """The series names Prometheus stores for metrics of these kinds."""
    out: set[str] = set()
    for name, kind in kinds.items():
        if kind == "histogram":
            out.update(name + s for s in HISTOGRAM_SUFFIXES)
        else:
            out.add(name)
    return out


def registry_kinds() -> dict[str, str]:
    """What the sidecar's metrics registry really exports (name as scraped → kind)."""
    kinds = {}
    for family in Metrics("probe").registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        kinds[name] = family.type
    return kinds


def unknown_metrics(dashboard: dict[str, Any], allowed: set[str]) -> list[str]:
    return [
        f"{where}: {sorted(metric_names(q) - allowed)}"
        for where, q in queries(dashboard)
        if metric_names(q) - allowed
    ]


def datasource_uids(path: Path) -> dict[str, str]:
    """uid → type of the datasources the compose stack provisions."""
    out = {}
    for f in sorted(path.glob("*.yaml")):
        for ds in yaml.safe_load(f.read_text())["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


# ---------------------------------------------------------------- tests


def test_there_are_the_three_dashboards() -> None:
    titles = {d["title"] for d in load_dashboards().values()}
    assert titles == {
        "Sidecar / Service overview",
        "Sidecar / Resilience",
        "Sidecar / Internals",
    }


def test_committed_json_is_the_generators_output() -> None:
    proc = subprocess.run(
        [sys.executable, str(DASHBOARDS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_registry_exports_exactly_the_design_metrics() -> None:
    assert registry_kinds() == DESIGN_METRICS


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, upstream) (rate(a_bucket{x=~"$v", '
            'y!="b(c)"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ("sum(rate(b_total[5m] offset 1h)) by (reason) / on (job) group_left c", {"b_total", "c"}),
        ('time() - d_seconds{upstream=~"${upstream}"} > bool 1e3', {"d_seconds"}),
        ("e or vector(0) and f unless g", {"e", "f", "g"}),
        ("max_over_time(h[1m:10s])", {"h"}),
        ("group by (service, version) (i * on (instance) group_left (service) j)", {"i", "j"}),
    ],
)
def test_metric_name_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("dashboard", "where", "expr"),
    all_queries(),
    ids=[f"{n}:{w}" for n, w, _ in all_queries()],
)
def test_query_uses_only_metrics_the_sidecar_exports(dashboard: str, where: str, expr: str) -> None:
    allowed = exposed_names(registry_kinds())
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    assert names <= allowed, f"{where}: not exported: {sorted(names - allowed)}"


def test_a_panel_naming_an_unexported_metric_is_caught() -> None:
    dashboard = load_dashboards()["sidecar-overview.json"]
    target = next(t for p in panels(dashboard) for t in p.get("targets", []))
    target["expr"] = target["expr"].replace(
        "http_server_request_duration_seconds_count", "envoy_cluster_upstream_rq_total"
    )
    problems = unknown_metrics(dashboard, exposed_names(registry_kinds()))
    assert len(problems) == 1 and "envoy_cluster_upstream_rq_total" in problems[0]


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Prometheus's own parser (promtool check rules) on every query, variables filled in."""
    promtool = require_binary("promtool")
    values = {"service": "bff", "upstream": ".*", "__rate_interval": "1m"}
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(q, values)}
        for i, (_, _, q) in enumerate(all_queries())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_panels_use_provisioned_datasources() -> None:
    provisioned = datasource_uids(PROVISIONING / "datasources")
    for name, dashboard in load_dashboards().items():
        refs = []
        for panel in panels(dashboard):
            if panel["type"] != "row":  # rows carry no queries
                refs += [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
        refs += [v["datasource"] for v in dashboard["templating"]["list"]]
        for ref in refs:
            assert ref["uid"] in provisioned, f"{name}: unknown datasource uid {ref['uid']}"
            assert provisioned[ref["uid"]] == ref["type"], f"{name}: {ref} type mismatch"


def test_exemplars_link_to_the_provisioned_jaeger() -> None:
    provisioned = datasource_uids(PROVISIONING / "datasources")
    text = (PROVISIONING / "datasources" / "datasources.yaml").read_text()
    prom = next(ds for ds in yaml.safe_load(text)["datasources"] if ds["type"] == "prometheus")
    (dest,) = prom["jsonData"]["exemplarTraceIdDestinations"]
    assert dest["name"] == "trace_id"  # the exemplar label the sidecar sets
    assert provisioned[dest["datasourceUid"]] == "jaeger"


def test_latency_panels_show_exemplars() -> None:
    overview = load_dashboards()["sidecar-overview.json"]
    with_exemplars = {
        m
        for p in panels(overview)
        for t in p.get("targets", [])
        if t.get("exemplar")
        for m in metric_names(t["expr"])
    }
    assert with_exemplars == {
        "http_server_request_duration_seconds_bucket",
        "http_client_request_duration_seconds_bucket",
    }


def test_variables_used_are_defined() -> None:
    for name, dashboard in load_dashboards().items():
        defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
        assert {"service", "upstream"} <= defined, name
        texts = [q for _, q in queries(dashboard)]
        texts += [p.get("title", "") for p in panels(dashboard)]
        used = {a or b for t in texts for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", t)}
        assert used <= defined, f"{name}: undefined variables {sorted(used - defined)}"


def test_layout_is_valid() -> None:
    uids = set()
    for name, dashboard in load_dashboards().items():
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in panels(dashboard):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, (name, p["title"])
    assert len(uids) == len(load_dashboards())


def test_provisioning_loads_the_mounted_dashboards_folder() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../dashboards:{provider['options']['path']}:ro" in mounts
    assert provider["type"] == "file"


def test_overview_shows_grpc_methods_with_their_status_codes() -> None:
    overview = load_dashboards()["sidecar-overview.json"]
    grpc = [
        (p["title"], t["expr"])
        for p in panels(overview)
        for t in p.get("targets", [])
        if metric_names(t["expr"]) & {"rpc_server_duration_seconds_count",
                                      "rpc_server_duration_seconds_bucket",
                                      "rpc_client_duration_seconds_count"}
    ]  # fmt: skip
    served = [e for _, e in grpc if "rpc_server_duration_seconds_count" in e]
    called = [e for _, e in grpc if "rpc_client_duration_seconds_count" in e]
    # Calls per method and status code, both the methods served and those called upstream.
    assert any("rpc_method" in e and "rpc_grpc_status_code" in e for e in served), grpc
    assert any("upstream" in e and "rpc_grpc_status_code" in e for e in called), grpc
    assert any("rpc_server_duration_seconds_bucket" in e for _, e in grpc), "gRPC latency"
    assert any('rpc_grpc_status_code!="0"' in e for e in called), "gRPC error ratio"
