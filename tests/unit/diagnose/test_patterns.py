"""Known answers for the patterns found anywhere in the call tree: sequential and repeated
calls under nested services, their saving on the root's critical path, the critical path
walked through services, client/server gaps, skew, missing parents and baselines."""

from __future__ import annotations

import pytest

from sidecar.diagnose import compare, html
from sidecar.diagnose.analysis import diagnose
from sidecar.diagnose.results import Diagnosis, HopStats, Pattern
from tests.unit.diagnose.builder import DOCS, ROOT_OP, USER, TraceBuilder, repeats

ROOT = f"bff {ROOT_OP}"
DOCS_HOP = f"{DOCS[0]} {DOCS[1]}"


def run(builders: list[TraceBuilder]) -> Diagnosis:
    return diagnose([b.trace() for b in builders], "bff", "GET /context")


def hop(d: Diagnosis, name: str) -> HopStats:
    [found] = [h for h in d.hops if h.name == name]
    return found


def only(d: Diagnosis, kind: str) -> Pattern:
    found = [p for p in d.patterns if p.kind == kind]
    assert len(found) == 1, [p.finding.message for p in d.patterns]
    return found[0]


# ---------------------------------------------------------------- nested sequential calls


def two_levels(base_ms: float = 0.0) -> TraceBuilder:
    """bff → user (5 ms), then document-service, which calls storage (20 ms) then index
    (30 ms) one after the other."""
    b = TraceBuilder(base_ms)
    root = b.span("bff", ROOT_OP, 0, 70)
    b.call(root, "bff", *USER, 1, 5)
    _, docs = b.call(root, "bff", *DOCS, 7, 60)
    assert docs is not None
    b.call(docs, "document-service", "storage", "GET /blobs/{id}", 8, 20)
    b.call(docs, "document-service", "index", "POST /search", 29, 30)
    return b


def test_sequential_calls_two_levels_down_rank_above_the_roots() -> None:
    d = run([two_levels(i * 1000) for i in range(20)])
    nested, top = (
        [p for p in d.sequential if p.depth == 1],
        [p for p in d.sequential if p.depth == 0],
    )
    [seq] = nested
    assert seq.path == (ROOT, DOCS_HOP)
    assert seq.stages == (("storage GET /blobs/{id}",), ("index POST /search",))
    assert seq.saving_ms == pytest.approx(20.0, abs=0.1)  # 20 + 30 - 30, all on the path
    assert seq.finding.message == (
        "in bff → document-service: storage and index are called one after the other; "
        "concurrent may save ~20 ms at p50 if none needs another's answer"
    )
    [root_level] = top
    assert root_level.saving_ms == pytest.approx(5.0, abs=0.1)  # 5 + 60 - 60
    messages = [f.message for f in d.findings]
    assert messages.index(seq.finding.message) < messages.index(root_level.finding.message)


def test_sequential_calls_three_levels_down() -> None:
    builders = []
    for i in range(10):
        b = TraceBuilder(i * 1000)
        root = b.span("bff", ROOT_OP, 0, 100)
        _, docs = b.call(root, "bff", *DOCS, 1, 98)
        assert docs is not None
        _, store = b.call(docs, "document-service", "storage", "GET /blobs/{id}", 2, 95)
        assert store is not None
        b.call(store, "storage", "disk", "READ", 3, 40, callee_ms=0)
        b.call(store, "storage", "replica", "READ", 44, 50, callee_ms=0)
        builders.append(b)
    d = run(builders)
    [seq] = d.sequential
    assert seq.path == (ROOT, DOCS_HOP, "storage GET /blobs/{id}")
    assert seq.depth == 2
    assert seq.saving_ms == pytest.approx(40.0, abs=0.1)
    assert seq.finding.message.startswith(
        "in bff → document-service → storage: disk and replica are called one after the other"
    )
    assert d.critical_chain is not None
    assert d.critical_chain.text == "bff → document-service → storage → replica READ"


def test_sequential_calls_off_the_critical_path_save_nothing() -> None:
    """document-service's two sequential calls run beside a longer user-service call: making
    them concurrent would not make the request faster."""
    builders = []
    for i in range(10):
        b = TraceBuilder(i * 1000)
        root = b.span("bff", ROOT_OP, 0, 102)
        b.call(root, "bff", *USER, 1, 100)
        _, docs = b.call(root, "bff", *DOCS, 1, 50)
        assert docs is not None
        b.call(docs, "document-service", "storage", "GET /blobs/{id}", 2, 20)
        b.call(docs, "document-service", "index", "POST /search", 23, 25)
        builders.append(b)
    d = run(builders)
    assert [p for p in d.patterns if p.depth > 0] == []


# ---------------------------------------------------------------- repeated calls (N+1)


@pytest.mark.parametrize("n", [3, 12, 50])
def test_repeated_calls_under_a_child_service(n: int) -> None:
    d = run([repeats(n, base_ms=i * 1000) for i in range(10)])
    rep = only(d, "repeated_calls")
    assert (rep.calls, rep.hop, rep.traces) == (n, "cache GET /k", 10)
    assert rep.path == (ROOT, DOCS_HOP)
    assert rep.saving_ms == pytest.approx((n - 1) * 2.0, abs=0.1)  # all but the longest
    assert rep.total_ms == pytest.approx(n * 2.0, abs=0.1)
    assert rep.finding.message.startswith(
        f"in bff → document-service: cache GET /k is called {n} times one after the other"
    )
    assert "may save" in rep.finding.message
    assert d.findings[0].kind == "slowest_hop"
    assert d.findings[0].hop == "cache GET /k"
    chain = d.critical_chain
    assert chain is not None and chain.text == f"bff → document-service → cache GET /k \u00d7{n}"
    assert "critical_path" in [f.kind for f in d.findings]


def test_two_repeated_calls_are_not_a_pattern_and_a_worker_pool_is_not_sequential() -> None:
    assert [p for p in run([repeats(2)]).patterns if p.kind == "repeated_calls"] == []
    builders = []
    for i in range(10):  # twelve calls, four at a time
        b = TraceBuilder(i * 1000)
        root = b.span("bff", ROOT_OP, 0, 40)
        for k in range(12):
            b.call(root, "bff", "cache", "GET /k", 1 + (k // 4) * 10, 9, callee_ms=0)
        builders.append(b)
    assert [p for p in run(builders).patterns if p.kind == "repeated_calls"] == []


def test_retries_are_not_repeated_calls() -> None:
    builders = []
    for i in range(10):
        b = TraceBuilder(i * 1000)
        root = b.span("bff", ROOT_OP, 0, 100)
        for attempt in (1, 2, 3, 4):
            b.call(
                root,
                "bff",
                *DOCS,
                1 + (attempt - 1) * 20,
                19,
                attempt=attempt,
                status=503 if attempt < 4 else 200,
            )
        builders.append(b)
    assert run(builders).patterns == ()


def test_serial_calls_with_an_invisible_dependency_say_may_and_either_order_says_would() -> None:
    same_order: list[TraceBuilder] = []
    either_order: list[TraceBuilder] = []
    for i in range(10):
        for out, swap in ((same_order, False), (either_order, i % 2 == 1)):
            b = TraceBuilder(i * 1000)
            root = b.span("bff", ROOT_OP, 0, 70)
            first, second = (DOCS, USER) if swap else (USER, DOCS)
            b.call(root, "bff", *first, 1, 30)
            b.call(root, "bff", *second, 32, 30)
            out.append(b)
    dependent = only(run(same_order), "sequential_calls")
    assert "may save ~30 ms" in dependent.finding.message
    assert "would" not in dependent.finding.message and not dependent.independent
    free = only(run(either_order), "sequential_calls")
    assert free.independent and "concurrent would save ~30 ms at p50" in free.finding.message


# ---------------------------------------------------------------- hops: gaps, skew, links


def test_gap_between_client_and_server_spans() -> None:
    builders = []
    for i in range(10):
        b = TraceBuilder(i * 1000)
        root = b.span("bff", ROOT_OP, 0, 12)
        # the server span starts 3 ms after the client's and ends 1 ms before it
        b.call(root, "bff", *DOCS, 1, 10, callee_ms=6, callee_shift_ms=2.8)
        builders.append(b)
    d = run(builders)
    docs = hop(d, DOCS_HOP)
    assert (docs.gap_before_p50_ms, docs.gap_after_p50_ms) == (3.0, 1.0)
    assert (docs.gap_p50_ms, docs.gap_calls) == (4.0, 10)
    [gap] = [f for f in d.findings if f.kind == "hop_gap"]
    assert gap.message.startswith(
        f"{DOCS_HOP}: 40% of the hop is spent outside the callee's "
        "server span, mostly before its server span starts"
    )


def test_small_gaps_are_not_findings() -> None:
    d = run([repeats(3, base_ms=i * 1000) for i in range(5)])
    assert hop(d, DOCS_HOP).gap_p50_ms == pytest.approx(0.6, abs=0.01)
    assert "hop_gap" not in [f.kind for f in d.findings]


def test_clock_skewed_child_service_gives_the_same_pattern() -> None:
    synced = run([repeats(12, base_ms=i * 1000) for i in range(10)])
    skewed = run([repeats(12, base_ms=i * 1000, shift=400.0) for i in range(10)])
    assert skewed.coverage.skew_adjusted_spans == 10
    a, b = only(synced, "repeated_calls"), only(skewed, "repeated_calls")
    assert (a.calls, a.path) == (b.calls, b.path)
    assert b.saving_ms == pytest.approx(a.saving_ms, abs=0.1)
    # the shifted server span's offsets were made up to fit: no gap is claimed for it
    assert hop(skewed, DOCS_HOP).gap_calls == 0 and hop(synced, DOCS_HOP).gap_calls == 10


def test_missing_parents_leave_the_rest_of_the_pattern() -> None:
    builders = [repeats(12, base_ms=i * 1000, drop_server=i < 3) for i in range(10)]
    d = run(builders)
    assert d.coverage.traces_with_missing_links == 3
    assert d.coverage.orphan_spans == 3 * 12
    assert "missing_links" in [f.kind for f in d.findings]
    rep = only(d, "repeated_calls")
    assert (rep.calls, rep.traces) == (12, 7)


# ---------------------------------------------------------------- baseline


def test_baseline_names_the_nested_pattern_that_grew() -> None:
    base = run([repeats(3, base_ms=i * 1000) for i in range(10)])
    now = run([repeats(12, base_ms=i * 1000) for i in range(10)])
    cmp = compare.compare(now, base)
    assert cmp.baseline_traces == 10
    first = cmp.changes[0]
    assert first.kind in ("pattern", "hop") and "cache GET /k" in first.subject
    assert first.delta_ms == pytest.approx(18.0, abs=0.5)  # (12 - 3) calls of 2 ms
    pattern = next(c for c in cmp.changes if c.kind == "pattern")
    assert pattern.message.startswith(
        "grew: in bff → document-service, cache GET /k called one after the other: 3 → 12 times"
    )
    assert (pattern.before_calls, pattern.after_calls) == (3, 12)
    assert all(c.kind != "pattern" for c in compare.compare(now, now).changes)


def test_html_brackets_nested_patterns_on_the_waterfall() -> None:
    d = run([repeats(12, base_ms=i * 1000) for i in range(10)])
    page = html.render(d)
    assert 'class="pattern-note repeated-note"' in page
    assert f'data-path="{ROOT} &gt; {DOCS_HOP}"' in page
    assert 'data-name="cache GET /k"' in page and 'data-repeated="true"' in page
    assert "cache GET /k \u00d712 one after the other;" in page
    assert page.count('class="pattern-mark"') == 2  # the p50 and the p99 waterfall
    assert 'id="critical-chain"' in page
