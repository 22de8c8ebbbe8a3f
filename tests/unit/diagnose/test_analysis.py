"""Known-answer traces → the diagnosis DESIGN §9 promises."""

from __future__ import annotations

import time

import pytest

from sidecar.diagnose import tree as tree_module
from sidecar.diagnose.analysis import NoMatchingTraces, diagnose
from sidecar.diagnose.model import Trace
from sidecar.diagnose.results import Diagnosis, HopStats
from tests.unit.diagnose.builder import (
    DOCS,
    RETR,
    ROOT_OP,
    USER,
    TraceBuilder,
    bff,
    concurrent_fanout,
    meshed,
    mixed,
    sequential_chain,
)


def run(builders: list[TraceBuilder], operation: str | None = "GET /context") -> Diagnosis:
    return diagnose([b.trace() for b in builders], "bff", operation)


def hop(d: Diagnosis, service: str) -> HopStats:
    [found] = [h for h in d.hops if h.service == service]
    return found


def kinds(d: Diagnosis) -> list[str]:
    return [f.kind for f in d.findings]


def test_sequential_chain_names_slowest_hop_and_the_saving() -> None:
    d = run(sequential_chain(100))
    assert d.operation == ROOT_OP  # "GET /context" matched the route by prefix
    assert (d.latency.count, d.latency.p50_ms, d.latency.p99_ms) == (100, 95.0, 155.0)
    assert d.slowest is not None
    # p99 traces: 155 ms of which documents took 120 ms → 77 %
    assert d.slowest.message == "document-service GET /documents/{id}: 77% of p99 critical path"
    docs = hop(d, "document-service")
    assert (docs.count, docs.p50_ms, docs.p99_ms) == (100, 60.0, 120.0)
    assert docs.operation == DOCS[1]
    [seq] = d.sequential
    assert seq.stages == (
        ("user-service GET /users/{id}",),
        ("document-service GET /documents/{id}",),
        ("retrieval-service POST /retrieve",),
    )
    assert seq.saving_ms == pytest.approx(30.0)  # 20 + 60 + 10 - 60
    assert seq.finding.message == (
        "user-service, document-service and retrieval-service are called one after the other; "
        "concurrent may save ~30 ms at p50 if none needs another's answer"
    )
    assert sum(h.critical_share for h in d.hops) + d.root_self_share == pytest.approx(1, abs=0.01)


def test_two_sequential_calls_use_the_plain_sentence() -> None:
    d = run([bff([(USER, 1, 30), (DOCS, 32, 50)], total_ms=84) for _ in range(10)])
    [seq] = d.sequential
    assert seq.finding.message == (
        "user-service and document-service are called one after the other; "
        "concurrent may save ~30 ms at p50 if none needs another's answer"
    )


def test_concurrent_fanout_has_no_sequential_finding() -> None:
    d = run(concurrent_fanout(100))
    assert d.sequential == ()
    assert "sequential_calls" not in kinds(d)
    assert d.slowest is not None and d.slowest.hop == "document-service GET /documents/{id}"
    # only the longest concurrent call is on the critical path
    assert hop(d, "user-service").critical_share == 0
    assert hop(d, "retrieval-service").critical_share == 0


def test_mixed_counts_the_overlapping_stage_once() -> None:
    d = run(mixed(50))
    [seq] = d.sequential
    assert seq.stages == (
        ("user-service GET /users/{id}",),
        ("document-service GET /documents/{id}", "retrieval-service POST /retrieve"),
    )
    assert seq.saving_ms == pytest.approx(20.0)  # (20 + max(60, 10)) - max(20, 60, 10)
    assert d.slowest is not None
    assert d.slowest.message == "document-service GET /documents/{id}: 71% of p99 critical path"


def test_retries_are_counted_and_a_storm_reported() -> None:
    builders = []
    for _ in range(20):
        b = TraceBuilder()
        root = b.span("bff", ROOT_OP, 0, 100)
        b.call(root, "bff", *DOCS, 1, 10, attempt=1, status=503, error_type="503")
        b.call(root, "bff", *DOCS, 12, 10, attempt=2, status=503, error_type="503")
        b.call(root, "bff", *DOCS, 24, 70, attempt=3)
        builders.append(b)
    d = run(builders)
    docs = hop(d, "document-service")
    assert (docs.count, docs.retries, docs.errors) == (60, 40, 40)
    storm = [f for f in d.findings if f.kind == "retry_storm"]
    assert len(storm) == 1 and "3.0 attempts per call" in storm[0].message
    assert "errors" in kinds(d)
    # retries of one call are not "sequential calls"
    assert d.sequential == ()


def test_attempt_without_a_callee_is_named_like_its_siblings() -> None:
    b = TraceBuilder()
    root = b.span("bff", ROOT_OP, 0, 50)
    b.call(
        root,
        "bff",
        "document-service",
        "GET",
        1,
        5,
        status=None,
        error_type="upstream_connect_failure",
        callee_ms=0,
    )
    client = b.span(
        "bff",
        "GET",
        7,
        40,
        root,
        "client",
        {"sidecar.upstream": "document-service", "sidecar.attempt": 2},
    )
    b.span("document-service", "GET /documents/{id}", 8, 38, client)
    d = run([b])
    assert [h.name for h in d.hops] == ["document-service GET /documents/{id}"]
    assert hop(d, "document-service").count == 2


def test_timeout_cascade_is_not_mistaken_for_clock_skew() -> None:
    builders = []
    for _ in range(10):
        b = TraceBuilder()
        root = b.span("bff", ROOT_OP, 0, 1005, tags={"http.response.status_code": 504})
        b.call(root, "bff", *USER, 1, 3)
        # the per-try timeout fires after 1 s, document-service keeps working for 3 s
        b.call(
            root, "bff", *DOCS, 4, 1000, status=504, error_type="upstream_timeout", callee_ms=3000
        )
        builders.append(b)
    d = run(builders)
    docs = hop(d, "document-service")
    assert (docs.timeouts, docs.errors) == (10, 10)
    assert d.coverage.skew_adjusted_spans == 0
    overrun = [f for f in d.findings if f.kind == "timeout_exceeds_deadline"]
    assert len(overrun) == 1 and "kept working after its caller gave up in 10 calls" in (
        overrun[0].message
    )
    assert d.slowest is not None and d.slowest.hop == docs.name
    assert docs.critical_share == pytest.approx(1000 / 1005, abs=0.01)


def test_deadline_tag_shorter_than_configured_timeout() -> None:
    b = TraceBuilder()
    root = b.span("bff", ROOT_OP, 0, 100)
    b.call(root, "bff", *DOCS, 1, 90)
    b.spans[-2]["tags"] += [
        {
            "key": "http.request.header.x-sidecar-expected-timeout-ms",
            "type": "string",
            "value": "500",
        },
        {"key": "sidecar.per_try_timeout_ms", "type": "int64", "value": 3000},
    ]
    d = run([b])
    [f] = [f for f in d.findings if f.kind == "timeout_exceeds_deadline"]
    assert "timeout 3000 ms is longer than the caller's remaining deadline 500 ms" in f.message


def test_skewed_clocks_give_the_same_answer_as_synchronised_ones() -> None:
    builders = []
    for i in range(50):
        b = TraceBuilder(base_ms=i * 1000)
        root = b.span("bff", ROOT_OP, 0, 95)
        b.call(root, "bff", *USER, 1, 20, callee_shift_ms=-400)  # user-service's clock is behind
        b.call(root, "bff", *DOCS, 22, 60, callee_shift_ms=+300)  # documents' is ahead
        b.call(root, "bff", *RETR, 83, 10)
        builders.append(b)
    d = run(builders)
    assert d.coverage.skew_adjusted_spans == 100
    [seq] = d.sequential
    assert seq.saving_ms == pytest.approx(30.0, abs=0.5)
    assert d.slowest is not None and d.slowest.hop == "document-service GET /documents/{id}"
    assert hop(d, "document-service").critical_share == pytest.approx(60 / 95, abs=0.01)


def test_missing_parent_is_reported_and_the_rest_still_analysed() -> None:
    builders = sequential_chain(10)
    for b in builders[:3]:  # bff's client span for documents was dropped
        client = next(
            s
            for s in b.spans
            if s["operationName"] == DOCS[1] and any(t["value"] == "client" for t in s["tags"])
        )
        b.spans.remove(client)
    d = run(builders)
    assert (d.coverage.traces_with_missing_links, d.coverage.orphan_spans) == (3, 3)
    assert "missing_links" in kinds(d)
    assert hop(d, "document-service").count == 7


def test_parent_above_the_operation_is_not_a_missing_link() -> None:
    b = bff([(USER, 1, 10)], total_ms=20)
    b.spans[0]["references"] = [
        {"refType": "CHILD_OF", "traceID": b.trace_id, "spanID": "00000000deadbeef"}
    ]  # the load generator's span
    d = run([b])
    assert d.coverage.traces_with_missing_links == 0


def test_follows_from_work_is_not_on_the_critical_path() -> None:
    b = bff([(USER, 1, 10)], total_ms=20)
    root = b.spans[0]["spanID"]
    b.span("audit-service", "POST /audit", 25, 200, root, "consumer", follows_from=True)
    d = run([b])
    audit = hop(d, "audit-service")
    assert (audit.async_calls, audit.critical_share) == (1, 0)
    assert d.coverage.skew_adjusted_spans == 0
    assert d.slowest is not None and d.slowest.hop.startswith("user-service")


def test_plain_jaeger_traces_of_directly_instrumented_apps() -> None:
    """No sidecar: app client spans with peer.service, and a callee without client spans."""
    builders = []
    for _ in range(5):
        b = TraceBuilder()
        root = b.span("bff", ROOT_OP, 0, 80)
        c = b.span("bff", "HTTP GET", 1, 30, root, "client", {"peer.service": "user-service"})
        b.span("user-service", "GET /users/{id}", 2, 28, c)
        b.span("document-service", "GET /documents/{id}", 32, 45, root)  # no client span
        builders.append(b)
    d = run(builders)
    assert sorted(h.name for h in d.hops) == [
        "document-service GET /documents/{id}",
        "user-service GET /users/{id}",
    ]
    assert len(d.sequential) == 1


def test_nested_hops_attribute_time_to_the_deepest_service() -> None:
    """document-service is slow only because storage is: storage is named, and
    document-service's self time excludes it."""
    builders = []
    for _ in range(5):
        b = TraceBuilder()
        root = b.span("bff", ROOT_OP, 0, 100)
        _, server = b.call(root, "bff", *DOCS, 1, 98)
        assert server is not None
        b.call(server, "document-service", "storage", "GET /blobs/{id}", 5, 85)
        builders.append(b)
    d = run(builders)
    assert d.slowest is not None and d.slowest.hop == "storage GET /blobs/{id}"
    assert hop(d, "document-service").self_p50_ms == pytest.approx(13.0)
    assert d.sequential == ()


def test_breaker_flapping() -> None:
    builders = []
    for i in range(20):
        b = TraceBuilder(base_ms=i * 100)
        root = b.span("bff", ROOT_OP, 0, 20)
        if i % 4 == 1:
            b.call(root, "bff", *DOCS, 1, 0.1, status=503, error_type="circuit_open", callee_ms=0)
        else:
            b.call(root, "bff", *DOCS, 1, 15)
        builders.append(b)
    d = run(builders)
    assert hop(d, "document-service").breaker_rejections == 5
    assert "breaker_flapping" in kinds(d)


def test_steady_open_breaker_is_not_flapping() -> None:
    builders = []
    for i in range(20):
        b = TraceBuilder(base_ms=i * 100)
        root = b.span("bff", ROOT_OP, 0, 20)
        if i >= 10:
            b.call(root, "bff", *DOCS, 1, 0.1, status=503, error_type="circuit_open", callee_ms=0)
        else:
            b.call(root, "bff", *DOCS, 1, 15)
        builders.append(b)
    assert "breaker_flapping" not in kinds(run(builders))


def test_huge_trace_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    b = TraceBuilder()
    root = b.span("bff", ROOT_OP, 0, 10_000)
    for i in range(30_000):
        b.span("bff", "cache.get", i * 0.3, 0.2, root, "internal")
    trace = b.trace()
    started = time.perf_counter()
    d = diagnose([trace], "bff", "GET /context")
    assert time.perf_counter() - started < 10
    assert d.coverage.truncated_traces == 1
    assert d.latency.count == 1


def test_deep_chain_does_not_recurse() -> None:
    b = TraceBuilder()
    parent = b.span("bff", ROOT_OP, 0, 5000)
    for i in range(3000):  # far deeper than Python's recursion limit
        parent = b.span(f"svc-{i % 2}", f"op{i}", 1 + i * 0.001, 4000 - i, parent)
    d = diagnose([b.trace()], "bff", None)
    assert d.latency.count == 1 and d.hops


def test_trace_count_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.diagnose.analysis as analysis

    monkeypatch.setattr(analysis, "MAX_TRACES", 5)
    d = run(sequential_chain(20))
    assert d.coverage.traces_analysed == 5 and d.coverage.capped


def test_operation_defaults_to_the_most_frequent_entry() -> None:
    d = run(sequential_chain(5), operation=None)
    assert d.operation == ROOT_OP


def test_operation_matching() -> None:
    m = tree_module.operation_matcher("GET /context")
    assert m("GET /context/{user_id}") and m("GET /context")
    assert not m("GET /contexts") and not m("POST /context/{user_id}")
    assert tree_module.operation_matcher("GET /context/42")("GET /context/{user_id}")


def test_no_matching_trace_raises() -> None:
    with pytest.raises(NoMatchingTraces, match="user-service"):
        diagnose([b.trace() for b in sequential_chain(3)], "user-service", "GET /nothing")
    with pytest.raises(NoMatchingTraces):
        diagnose([Trace("t", ())], "bff", None)


def test_sidecars_forwarding_to_their_local_app_are_not_hops() -> None:
    """The demo's real shape: the inbound sidecar's CLIENT span to its own app is the same
    call as the caller's hop, not a second one (nor, for the bff, a hop at all)."""
    n = 50
    builders = [
        meshed([(USER, 1, 20), (DOCS, 22, 60), (RETR, 83, 10)], total_ms=95, base_ms=i * 1000)
        for i in range(n)
    ]
    d = run(builders)
    assert {h.service for h in d.hops} == {"user-service", "document-service", "retrieval-service"}
    assert all(h.count == n and h.traces == n for h in d.hops), d.hops
    assert d.slowest is not None
    assert d.slowest.message.startswith("document-service GET /documents/{id}: ")
    [seq] = d.sequential
    assert seq.saving_ms == pytest.approx(30.0, abs=1)
