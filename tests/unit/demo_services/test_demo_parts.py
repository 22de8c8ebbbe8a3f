"""The pure parts of `sidecar demo`: topology and sidecar configs, percentiles, Server-Timing,
trace merging, the fallback breakdown."""

from __future__ import annotations

import math

import pytest

from sidecar.config import build_config
from sidecar.demo import grpc_calls
from sidecar.demo.command import export_from_args
from sidecar.demo.load import PhaseResult, parse_server_timing, percentile
from sidecar.demo.topology import Export, plan, sidecar_config
from sidecar.demo.traces import merge_traces, server_timing_breakdown


def test_plan_gives_every_listener_its_own_port_and_points_bff_at_its_sidecar():
    plans = plan()
    ports = [p for s in plans for p in (s.app_port, s.inbound, s.outbound, s.admin)]
    assert len(set(ports)) == 16
    bff = plans[0]
    assert bff.name == "bff" and bff.env["SIDECAR_OUTBOUND"] == f"http://127.0.0.1:{bff.outbound}"
    assert {p.module for p in plans} == {
        "demo_services.bff",
        "demo_services.user_service",
        "demo_services.document_service",
        "demo_services.retrieval_service",
    }
    with pytest.raises(ValueError):
        plan([1] * 16)


@pytest.mark.parametrize("consul", [None, "http://127.0.0.1:8500"])
def test_generated_sidecar_configs_are_valid(consul):
    plans = plan()
    bff, *ups = plans
    data = sidecar_config(bff, ups, Export(), consul)
    config = build_config(data, env={})
    assert config.service.port == bff.app_port
    assert config.tracing.exporter == "none" and config.tracing.ratio == 1.0
    assert config.admin.expose_debug is False
    assert config.configured_upstreams() == {
        "user-service",
        "document-service",
        "retrieval-service",
    }
    if consul is None:
        doc = next(u for u in ups if u.name == "document-service")
        assert config.discovery.static["document-service"] == [f"127.0.0.1:{doc.inbound}"]
    else:
        assert config.discovery.consul is not None and not config.discovery.static
    # The gRPC hop retries UNAVAILABLE like a 503; the HTTP hops keep the defaults.
    retries_on = config.policy("retrieval-service").retries.on
    assert "unavailable" in retries_on and 503 in retries_on
    assert "unavailable" not in config.policy("document-service").retries.on
    leaf = build_config(sidecar_config(ups[0], [], Export("otlp_grpc", "http://h:4317")), env={})
    assert leaf.tracing.exporter == "otlp_grpc" and leaf.tracing.endpoint == "http://h:4317"


def test_export_flags():
    assert export_from_args(None, None) == Export()
    assert export_from_args("http://c:4317", None) == Export("otlp_grpc", "http://c:4317")
    assert export_from_args("http://c:4318", None).exporter == "otlp_http"
    assert export_from_args(None, "http://jaeger:16686") == Export(
        "otlp_grpc", "http://jaeger:4317"
    )


def test_percentile_interpolates():
    assert percentile([3, 1, 2, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 99) == 99
    assert math.isnan(percentile([], 50))


def test_server_timing_parsing():
    assert parse_server_timing("user-service;dur=12.5, db;desc=x, total;dur=40") == {
        "user-service": 12.5,
        "total": 40.0,
    }
    assert parse_server_timing("a;dur=oops") == {}


def _timing(user: float, doc: float, ret: float, total: float) -> dict[str, float]:
    return {"user-service": user, "document-service": doc, "retrieval-service": ret, "total": total}


def test_breakdown_names_slowest_hop_and_detects_sequential_calls():
    phase = PhaseResult("before")
    phase.timings = [_timing(20, 200 + i, 60, 285 + i) for i in range(50)]
    b = server_timing_breakdown(phase)
    assert b is not None and b.slowest is not None
    assert b.slowest.name == "document-service"
    assert b.sequential
    assert b.saving_p50_ms == pytest.approx(80)


def test_breakdown_of_concurrent_calls_is_not_sequential():
    phase = PhaseResult("after")
    phase.timings = [_timing(20, 200, 60, 205) for _ in range(20)]
    b = server_timing_breakdown(phase)
    assert b is not None and not b.sequential
    assert server_timing_breakdown(PhaseResult("empty")) is None


def test_merge_completes_entry_traces_and_keeps_processes_apart():
    entry = {
        "data": [
            {
                "traceID": "t1",
                "spans": [{"spanID": "a", "processID": "p1"}, {"spanID": "b", "processID": "p1"}],
                "processes": {"p1": {"serviceName": "bff"}},
            }
        ]
    }
    downstream = {
        "data": [
            {
                "traceID": "t1",
                "spans": [{"spanID": "c", "processID": "p1"}, {"spanID": "a", "processID": "p1"}],
                "processes": {"p1": {"serviceName": "document-service"}},
            },
            {"traceID": "other", "spans": [{"spanID": "z", "processID": "p1"}], "processes": {}},
        ]
    }
    merged = merge_traces(entry, [downstream])
    assert [t["traceID"] for t in merged["data"]] == ["t1"]
    trace = merged["data"][0]
    assert sorted(s["spanID"] for s in trace["spans"]) == ["a", "b", "c"]
    services = {trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]}
    assert services == {"bff", "document-service"}


METRICS = """\
# HELP rpc_client_duration_seconds x
# TYPE rpc_client_duration_seconds histogram
rpc_client_duration_seconds_bucket{service="bff",upstream="retrieval-service",rpc_system="grpc",\
rpc_service="demo.retrieval.v1.Retrieval",rpc_method="Retrieve",rpc_grpc_status_code="0",le="+Inf"} 40
rpc_client_duration_seconds_count{service="bff",upstream="retrieval-service",rpc_system="grpc",\
rpc_service="demo.retrieval.v1.Retrieval",rpc_method="Retrieve",rpc_grpc_status_code="0"} 40
rpc_client_duration_seconds_count{service="bff",upstream="retrieval-service",rpc_system="grpc",\
rpc_service="demo.retrieval.v1.Retrieval",rpc_method="Retrieve",rpc_grpc_status_code="14"} 3
rpc_client_duration_seconds_count{service="retrieval-service",upstream="retrieval-service",\
rpc_system="grpc",rpc_service="demo.retrieval.v1.Retrieval",rpc_method="Retrieve",\
rpc_grpc_status_code="0"} 43
# HELP rpc_server_duration_seconds x
# TYPE rpc_server_duration_seconds histogram
rpc_server_duration_seconds_count{service="retrieval-service",rpc_system="grpc",\
rpc_service="demo.retrieval.v1.Retrieval",rpc_method="Retrieve",rpc_grpc_status_code="0"} 43
# HELP http_server_duration_seconds x
# TYPE http_server_duration_seconds histogram
http_server_duration_seconds_count{service="bff"} 99
"""


def test_grpc_counts_name_methods_and_status_codes():
    counts = grpc_calls.parse_counts(METRICS)
    by = {(c.side, c.service, c.status): c for c in counts}
    assert by[("client", "bff", "OK")].calls == 40
    assert by[("client", "bff", "UNAVAILABLE")].calls == 3
    assert by[("server", "retrieval-service", "OK")].method == (
        "demo.retrieval.v1.Retrieval/Retrieve"
    )
    assert len(counts) == 4  # the HTTP histogram is not a gRPC count
    assert grpc_calls.rows(counts) == [
        ("bff", "client", "Retrieval/Retrieve", "OK", "40"),
        ("bff", "client", "Retrieval/Retrieve", "UNAVAILABLE", "3"),
        ("retrieval-service", "server", "Retrieval/Retrieve", "OK", "43"),
    ]
