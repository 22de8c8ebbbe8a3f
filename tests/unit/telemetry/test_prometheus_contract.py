"""Contract of the one reach into prometheus_client's internals (HistogramCell in
sidecar/telemetry/metrics.py): it reads a histogram child's `_upper_bounds` and `_created` and
replaces its `_child_samples`. If a prometheus_client release changes any of these, these tests
fail before a scrape silently loses buckets: the exposition of a HistogramCell must stay
byte-identical to what prometheus_client itself writes for the same observations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from sidecar.telemetry.metrics import DURATION_BUCKETS, OVERHEAD_BUCKETS, HistogramCell

OBSERVATIONS = (0.0001, 0.004, 0.005, 0.0051, 0.09, 0.3, 2.0, 9.99, 10.0, 42.0)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = Histogram("d_seconds", "d", ["upstream"], buckets=DURATION_BUCKETS, registry=ours)
    b = Histogram("d_seconds", "d", ["upstream"], buckets=DURATION_BUCKETS, registry=theirs)
    return ours, a, theirs, b


def test_the_internals_the_cell_relies_on_exist() -> None:
    child = Histogram("h_seconds", "h", ["x"], registry=CollectorRegistry()).labels("a")
    assert list(child._upper_bounds)[-1] == float("inf")
    assert isinstance(child._created, float)
    assert callable(child._child_samples)


@pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
def test_exposition_is_identical_to_prometheus_clients_own(render: object) -> None:
    ours, a, theirs, b = _pair()
    cell = HistogramCell(a.labels("user-service"))
    child = b.labels("user-service")
    # Same creation time, so the _created samples compare equal too.
    child._created = a.labels("user-service")._created
    for value in OBSERVATIONS:
        cell.observe(value)
        child.observe(value)
    assert render(ours) == render(theirs)  # type: ignore[operator]


@pytest.mark.parametrize("buckets", [DURATION_BUCKETS, OVERHEAD_BUCKETS])
def test_every_value_lands_in_the_bucket_prometheus_client_puts_it_in(
    buckets: tuple[float, ...],
) -> None:
    # The cell finds the bucket itself (a scan, not prometheus_client's loop): each bound,
    # just under and over it, zero and past the last bound.
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = Histogram("o_seconds", "o", ["d"], buckets=buckets, registry=ours)
    b = Histogram("o_seconds", "o", ["d"], buckets=buckets, registry=theirs)
    cell, child = HistogramCell(a.labels("x")), b.labels("x")
    child._created = a.labels("x")._created
    values = [0.0, buckets[-1] * 2]
    for bound in buckets:
        values += [bound, bound * 0.999, bound * 1.001]
    for value in values:
        cell.observe(value)
        child.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)


def test_exemplars_reach_openmetrics_on_the_observed_bucket() -> None:
    ours, a, _, _ = _pair()
    cell = HistogramCell(a.labels("user-service"))
    cell.observe(0.02, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    text = generate_openmetrics(ours).decode()
    line = next(x for x in text.splitlines() if 'le="0.025"' in x)
    assert '# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.02' in line


def test_the_created_series_switch_is_the_one_prometheus_client_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HistogramCell reads `prometheus_client.metrics._use_created` (set from
    PROMETHEUS_DISABLE_CREATED_SERIES): with it off, both expositions drop `_created` alike."""
    import prometheus_client.metrics as prom_metrics

    assert isinstance(prom_metrics._use_created, bool)
    monkeypatch.setattr(prom_metrics, "_use_created", False)
    ours, a, theirs, b = _pair()
    cell = HistogramCell(a.labels("user-service"))
    child = b.labels("user-service")
    for value in OBSERVATIONS:
        cell.observe(value)
        child.observe(value)
    assert b"_created" not in generate_latest(ours)
    assert generate_latest(ours) == generate_latest(theirs)
