"""SpanStarter decides sampled-out spans itself; its spans must match what the SDK would
start (ids, flags, trace state), and the sampled share of roots must stay the ratio."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from sidecar.config import TracingConfig
from sidecar.telemetry.tracing import SpanStarter, build_tracing
from sidecar.vocab.names import SAMPLERS


def _starter(sampler: Any, ratio: float) -> tuple[SpanStarter, object]:
    tracing = build_tracing(TracingConfig(exporter="none", sampler=sampler, ratio=ratio), "svc")
    return SpanStarter(tracing), tracing.tracer


def _parent(trace_id: int, flags: int, remote: bool) -> Context:
    sc = SpanContext(
        trace_id,
        0x1234,
        is_remote=remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState([("k", "v")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(sc), Context())


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("remote", [True, False])
@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_child_spans_match_the_sdk(sampler: str, remote: bool, flags: int) -> None:
    starter, tracer = _starter(sampler, 0.5)
    rng = random.Random(7)
    for _ in range(50):
        ctx = _parent(rng.getrandbits(128) or 1, flags, remote)
        ours = starter.start("GET", ctx, SpanKind.CLIENT)
        sdk = tracer.start_span("GET", ctx, kind=SpanKind.CLIENT)  # type: ignore[attr-defined]
        a, b = ours.get_span_context(), sdk.get_span_context()
        assert ours.is_recording() == sdk.is_recording()
        assert (a.trace_id, a.trace_flags, a.trace_state, a.is_remote) == (
            b.trace_id,
            b.trace_flags,
            b.trace_state,
            b.is_remote,
        )
        assert a.span_id not in (0, 0x1234)
        ours.end()
        sdk.end()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_root_spans_match_the_sdk_decision_on_their_trace_id(sampler: str) -> None:
    starter, tracer = _starter(sampler, 0.3)
    bound = TraceIdRatioBased.get_bound_for_rate(0.3)
    for _ in range(300):
        span = starter.start("GET", Context(), SpanKind.SERVER)
        sc = span.get_span_context()
        assert sc.is_valid and not sc.is_remote
        assert sc.trace_flags.random_trace_id
        if sampler.endswith("always_on"):
            expected = True
        elif sampler.endswith("always_off"):
            expected = False
        else:
            expected = sc.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound
        assert sc.trace_flags.sampled == expected
        assert span.is_recording() == expected
        span.end()


def test_sampled_share_of_roots_is_the_ratio() -> None:
    starter, _ = _starter("parentbased_traceidratio", 0.25)
    random.seed(11)
    n = 8000
    sampled = 0
    for _ in range(n):
        span = starter.start("GET", Context(), SpanKind.SERVER)
        sampled += span.get_span_context().trace_flags.sampled
        span.end()
    # Binomial(8000, 0.25): sd ≈ 39; a doubled draw would give ~6 %.
    assert 0.22 < sampled / n < 0.28
