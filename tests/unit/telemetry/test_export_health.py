"""The exporter's outage state machine: an outage starts once, counts every span dropped
while it lasts (failed batches and queue overflow), and ends once."""

from __future__ import annotations

from sidecar.telemetry.export_health import ExportHealth, ExportState, Recovery


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_starts_once_and_ends_once_with_what_it_dropped() -> None:
    clock = Clock()
    health = ExportHealth(clock)
    assert health.succeeded() is None
    health.overflowed(7)  # a full queue while healthy is not an outage
    assert health.failed(10) is True
    assert health.state is ExportState.FAILING
    for _ in range(29):
        clock.now += 1.0
        assert health.failed(10) is False
    health.overflowed(3)
    clock.now += 1.5
    assert health.succeeded() == Recovery(failed_for=30.5, dropped=303)
    assert health.state is ExportState.HEALTHY
    assert health.succeeded() is None


def test_a_second_outage_counts_from_zero() -> None:
    clock = Clock()
    health = ExportHealth(clock)
    health.failed(5)
    health.succeeded()
    clock.now += 60
    assert health.failed(2) is True
    clock.now += 2
    assert health.succeeded() == Recovery(failed_for=2.0, dropped=2)
