from __future__ import annotations

from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_prom

from sidecar.telemetry.labels import method_label
from sidecar.telemetry.metrics import DURATION_BUCKETS, Metrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

# DESIGN §7: family name (as exposed, without sample suffixes) → type, label names.
EXPECTED = {
    "http_server_request_duration_seconds": (
        "histogram",
        {"service", "http_request_method", "http_route", "http_response_status_code", "error_type"},
    ),
    "http_client_request_duration_seconds": (
        "histogram",
        {"service", "upstream", "http_request_method", "http_response_status_code", "error_type"},
    ),
    "sidecar_upstream_endpoints": ("gauge", {"service", "upstream", "state"}),
    "sidecar_circuit_breaker_state": ("gauge", {"service", "upstream"}),
    "sidecar_circuit_breaker_transitions": ("counter", {"service", "upstream", "to"}),
    "sidecar_retries": ("counter", {"service", "upstream", "reason"}),
    "sidecar_retry_budget_exhausted": ("counter", {"service", "upstream"}),
    "sidecar_requests_rejected": ("counter", {"service", "upstream", "reason"}),
    "sidecar_fallbacks": ("counter", {"service", "upstream", "kind", "reason"}),
    "sidecar_inflight_requests": ("gauge", {"service", "direction", "upstream"}),
    "sidecar_discovery_last_update_timestamp_seconds": ("gauge", {"service", "upstream", "source"}),
    "sidecar_discovery_errors": ("counter", {"service", "source"}),
    "sidecar_proxy_overhead_seconds": ("histogram", {"service", "direction"}),
    "sidecar_spans_dropped": ("counter", set()),
    "sidecar_build_info": ("gauge", {"version"}),
}


def exercised() -> Metrics:
    m = Metrics("bff", ["/users/{id}", "/documents/{id}"])
    m.observe_server("GET", m.route("/users/7"), 200, "", 0.012, TRACE_ID)
    m.observe_client(m.upstream("user-service"), "GET", 503, "503", 0.2, TRACE_ID)
    m.observe_overhead("outbound", 0.0003)
    m.inflight_gauge("outbound", "user-service").inc()
    m.retry("user-service", "503")
    m.retry_budget_exhausted("user-service")
    m.breaker_state("user-service", "open")
    m.rejected("user-service", "circuit_open")
    m.fallback("user-service", "static", "circuit_open")
    m.endpoints("user-service", healthy=2, ejected=1)
    m.discovery_update("user-service", "consul", 1_700_000_000.0)
    m.discovery_error("consul")
    m.spans_dropped_count(3)
    return m


def families(m: Metrics, accept: str | None = None) -> dict[str, Any]:
    body, _ = m.render(accept)
    parse = parse_om if accept else parse_prom
    return {f.name: f for f in parse(body.decode())}


def test_every_design_metric_is_exposed_with_exact_labels() -> None:
    fams = families(exercised())
    for name, (kind, labels) in EXPECTED.items():
        fam = fams.get(name)
        assert fam is not None, f"{name} missing; have {sorted(fams)}"
        assert fam.type == kind, name
        samples = fam.samples
        assert samples, name
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)


def test_prometheus_text_names_and_values() -> None:
    body, content_type = exercised().render("text/plain")
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "sidecar_retries_total{" in text
    assert "sidecar_spans_dropped_total 3.0" in text
    assert 'sidecar_circuit_breaker_state{service="bff",upstream="user-service"} 2.0' in text
    assert 'sidecar_build_info{version="0.1.0"} 1.0' in text
    assert 'http_route="/users/{id}"' in text
    assert 'http_response_status_code="200"' in text
    assert "# EXEMPLAR" not in text and "trace_id" not in text


def test_duration_buckets_are_otel_advised() -> None:
    fams = families(exercised())
    fam = fams["http_server_request_duration_seconds"]
    les = [s.labels["le"] for s in fam.samples if s.name.endswith("_bucket")]
    assert [float(x) for x in les[:-1]] == list(DURATION_BUCKETS)
    assert les[-1] == "+Inf"
    overhead = fams["sidecar_proxy_overhead_seconds"]
    les = [float(s.labels["le"]) for s in overhead.samples if s.name.endswith("_bucket")]
    assert les[0] <= 0.0001 and les[-1] == float("inf")


def test_openmetrics_scrape_carries_trace_id_exemplars() -> None:
    m = exercised()
    body, content_type = m.render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    exemplars = [
        s.exemplar for f in parse_om(body.decode()) for s in f.samples if s.exemplar is not None
    ]
    assert {e.labels["trace_id"] for e in exemplars} == {TRACE_ID}
    names = {f.name for f in parse_om(body.decode()) for s in f.samples if s.exemplar is not None}
    assert names == {
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
    }


def test_unsampled_observations_have_no_exemplar() -> None:
    m = Metrics("bff")
    m.observe_client("user-service", "GET", 200, "", 0.02)
    body, _ = m.render("application/openmetrics-text")
    assert b"trace_id" not in body


def test_two_hundred_distinct_paths_stay_under_twenty_series_per_histogram() -> None:
    m = Metrics("bff", ["/users/{id}"])
    for i in range(200):
        path = f"/items/{i}/x{i}" if i % 2 else f"/users/{i}"
        method = "GET" if i % 3 else f"M{i}"  # odd methods collapse to _OTHER
        m.observe_server(method_label(method), m.route(path), 200, "", 0.01)
        m.observe_client(m.upstream(f"svc-{i}"), method_label(method), 200, "", 0.01)
    fams = families(m)
    for name in ("http_server_request_duration_seconds",):
        series = {
            tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            for s in fams[name].samples
        }
        assert len(series) < 20, series
    samples = fams["http_server_request_duration_seconds"].samples
    routes = {s.labels["http_route"] for s in samples}
    methods = {s.labels["http_request_method"] for s in samples}
    assert routes == {"/users/{id}", "other"}
    assert methods == {"GET", "_OTHER"}


def test_upstream_label_values_are_capped() -> None:
    m = Metrics("bff", max_upstreams=3)
    labels = [m.upstream(f"svc-{i}") for i in range(10)]
    assert labels[:3] == ["svc-0", "svc-1", "svc-2"]
    assert set(labels[3:]) == {"other"}
    assert m.upstream("svc-1") == "svc-1"


def test_registry_is_private() -> None:
    from prometheus_client import REGISTRY

    Metrics("a")
    Metrics("a")  # a second instance must not collide with the first
    assert "sidecar_build_info" not in {f.name for f in REGISTRY.collect()}


def test_breaker_states_and_transitions() -> None:
    m = Metrics("bff")
    for state in ("open", "half_open", "closed", "open"):
        m.breaker_state("user-service", state)
    fams = families(m)
    gauge = fams["sidecar_circuit_breaker_state"].samples[0].value
    assert gauge == 2
    transitions = {
        s.labels["to"]: s.value
        for s in fams["sidecar_circuit_breaker_transitions"].samples
        if s.name.endswith("_total")
    }
    assert transitions == {"open": 2, "half_open": 1, "closed": 1}


def test_client_status_zero_means_no_response() -> None:
    m = Metrics("bff")
    m.observe_client("user-service", "GET", 0, "upstream_connect_failure", 0.001)
    text = m.render(None)[0].decode()
    assert 'http_response_status_code=""' in text
    assert 'error_type="upstream_connect_failure"' in text
