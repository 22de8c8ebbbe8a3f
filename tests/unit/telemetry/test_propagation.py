from __future__ import annotations

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sidecar.http import Headers
from sidecar.telemetry.propagation import HeaderPropagator

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN = 0x00F067AA0BA902B7
TRACE_HEX = f"{TRACE:032x}"
SPAN_HEX = f"{SPAN:016x}"


def parent_of(ctx: Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def context_for(trace_id: int, span_id: int, sampled: bool = True) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    sc = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(sc))


def test_w3c_extract_and_baggage() -> None:
    p = HeaderPropagator(["tracecontext", "baggage"])
    h = Headers(
        [("traceparent", f"00-{TRACE_HEX}-{SPAN_HEX}-01"), ("baggage", "tenant=acme,plan=pro")]
    )
    ctx = p.extract(h)
    sc = parent_of(ctx)
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled, sc.is_remote) == (
        TRACE,
        SPAN,
        True,
        True,
    )
    assert baggage.get_all(ctx) == {"tenant": "acme", "plan": "pro"}


def test_tracecontext_is_always_on() -> None:
    p = HeaderPropagator(["b3"])
    assert p.names == ("tracecontext", "b3")
    h = Headers([("traceparent", f"00-{TRACE_HEX}-{SPAN_HEX}-00")])
    sc = parent_of(p.extract(h))
    assert sc.trace_id == TRACE and not sc.trace_flags.sampled


def test_b3_single_extract_variants() -> None:
    p = HeaderPropagator(["b3"])
    sc = parent_of(p.extract(Headers([("b3", f"{TRACE_HEX}-{SPAN_HEX}-1-{'1' * 16}")])))
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (TRACE, SPAN, True)
    # 64-bit trace id is left-padded; "d" (debug) means sampled
    sc = parent_of(p.extract(Headers([("b3", f"a3ce929d0e0e4736-{SPAN_HEX}-d")])))
    assert sc.trace_id == 0xA3CE929D0E0E4736 and sc.trace_flags.sampled
    sc = parent_of(p.extract(Headers([("b3", f"{TRACE_HEX}-{SPAN_HEX}-0")])))
    assert sc.is_valid and not sc.trace_flags.sampled
    for bad in ("0", "1", "zz-11", f"{TRACE_HEX}-", f"{'0' * 32}-{SPAN_HEX}-1"):
        assert not parent_of(p.extract(Headers([("b3", bad)]))).is_valid, bad


def test_b3_multi_extract() -> None:
    p = HeaderPropagator(["b3multi"])
    h = Headers([("X-B3-TraceId", TRACE_HEX), ("X-B3-SpanId", SPAN_HEX), ("X-B3-Sampled", "1")])
    sc = parent_of(p.extract(h))
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (TRACE, SPAN, True)
    h = Headers([("x-b3-traceid", TRACE_HEX), ("x-b3-spanid", SPAN_HEX), ("x-b3-flags", "1")])
    assert parent_of(p.extract(h)).trace_flags.sampled
    assert not parent_of(p.extract(Headers([("x-b3-traceid", TRACE_HEX)]))).is_valid


def test_jaeger_extract() -> None:
    p = HeaderPropagator(["jaeger"])
    sc = parent_of(p.extract(Headers([("uber-trace-id", f"{TRACE_HEX}:{SPAN_HEX}:0:1")])))
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (TRACE, SPAN, True)
    sc = parent_of(p.extract(Headers([("uber-trace-id", f"{TRACE_HEX}%3A{SPAN_HEX}%3A0%3A0")])))
    assert sc.is_valid and not sc.trace_flags.sampled
    assert not parent_of(p.extract(Headers([("uber-trace-id", "nonsense")]))).is_valid


def test_formats_not_configured_are_ignored() -> None:
    p = HeaderPropagator(["tracecontext"])
    h = Headers([("b3", f"{TRACE_HEX}-{SPAN_HEX}-1"), ("uber-trace-id", f"{TRACE_HEX}:1:0:1")])
    assert not parent_of(p.extract(h)).is_valid


def test_first_present_format_wins_in_configured_order() -> None:
    other = 0x1234
    h = Headers(
        [
            ("uber-trace-id", f"{other:032x}:{SPAN_HEX}:0:1"),
            ("x-b3-traceid", TRACE_HEX),
            ("x-b3-spanid", SPAN_HEX),
            ("x-b3-sampled", "1"),
        ]
    )
    assert parent_of(HeaderPropagator(["b3multi", "jaeger"]).extract(h)).trace_id == TRACE
    assert parent_of(HeaderPropagator(["jaeger", "b3multi"]).extract(h)).trace_id == other
    # a broken header of an earlier format does not hide a valid later one
    h.add("traceparent", "00-garbage")
    assert parent_of(HeaderPropagator(["tracecontext", "b3multi"]).extract(h)).trace_id == TRACE


def test_inject_all_formats_and_roundtrip_each() -> None:
    names = ["tracecontext", "baggage", "b3", "b3multi", "jaeger"]
    p = HeaderPropagator(names)
    ctx = baggage.set_baggage("tenant", "acme", context_for(TRACE, SPAN))
    h = Headers([("x-b3-parentspanid", "stale"), ("x-b3-traceid", "stale")])
    p.inject(h, ctx)
    assert h.get("traceparent") == f"00-{TRACE_HEX}-{SPAN_HEX}-01"
    assert h.get("b3") == f"{TRACE_HEX}-{SPAN_HEX}-1"
    assert h.get("x-b3-traceid") == TRACE_HEX and h.get_all("x-b3-traceid") == [TRACE_HEX]
    assert h.get("x-b3-spanid") == SPAN_HEX and h.get("x-b3-sampled") == "1"
    assert "x-b3-parentspanid" not in h
    assert h.get("uber-trace-id") == f"{TRACE_HEX}:{SPAN_HEX}:0:1"
    assert h.get("baggage") == "tenant=acme"
    for header in ("traceparent", "b3", "x-b3-traceid", "uber-trace-id"):
        only = Headers([(k, v) for k, v in h if k.startswith(header[:4])])
        sc = parent_of(HeaderPropagator([n for n in names if n != "tracecontext"]).extract(only))
        assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (TRACE, SPAN, True), header


def test_inject_unsampled() -> None:
    p = HeaderPropagator(["b3", "b3multi", "jaeger"])
    h = Headers()
    p.inject(h, context_for(TRACE, SPAN, sampled=False))
    assert h.get("traceparent", "").endswith("-00")
    assert h.get("b3", "").endswith("-0")
    assert h.get("x-b3-sampled") == "0"
    assert h.get("uber-trace-id", "").endswith(":0")


def test_inject_without_span_writes_nothing() -> None:
    h = Headers()
    HeaderPropagator(["b3"]).inject(h, Context())
    assert len(h) == 0


def test_w3c_rules_and_tracestate_roundtrip() -> None:
    p = HeaderPropagator(["tracecontext"])
    bad = [
        f"ff-{TRACE_HEX}-{SPAN_HEX}-01",  # version ff is invalid
        f"00-{TRACE_HEX.upper()}-{SPAN_HEX}-01",  # ids are lower-case hex
        f"00-{'0' * 32}-{SPAN_HEX}-01",
        f"00-{TRACE_HEX}-{'0' * 16}-01",
        f"00-{TRACE_HEX}-{SPAN_HEX}-01-extra",  # version 00 has nothing after flags
        f"00-{TRACE_HEX}-{SPAN_HEX}",
    ]
    for value in bad:
        assert not parent_of(p.extract(Headers([("traceparent", value)]))).is_valid, value
    # a future version may carry more fields
    assert parent_of(p.extract(Headers([("traceparent", f"01-{TRACE_HEX}-{SPAN_HEX}-01-x")])))

    h = Headers(
        [("traceparent", f"00-{TRACE_HEX}-{SPAN_HEX}-01"), ("tracestate", "vendor=abc,other=1")]
    )
    ctx = p.extract(h)
    out = Headers()
    p.inject(out, ctx)
    assert out.get("tracestate") == "vendor=abc,other=1"
    assert "baggage" not in out  # nothing to carry


def test_several_formats_at_once_equal_each_format_in_turn_with_and_without_tracestate() -> None:
    # The formats' name sets are combined once per combination and reused: a context with a
    # tracestate replaces the caller's, one without leaves it, call after call.
    names = ["tracecontext", "b3", "b3multi"]
    together = HeaderPropagator(names)
    each = [HeaderPropagator([n]) for n in names]
    incoming = [
        ("tracestate", "caller=1"),
        ("x-b3-parentspanid", "stale"),
        ("b3", "stale"),
        ("accept", "*/*"),
    ]
    with_state = HeaderPropagator(["tracecontext"]).extract(
        Headers([("traceparent", f"00-{TRACE_HEX}-{SPAN_HEX}-01"), ("tracestate", "ours=2")])
    )
    for ctx in (with_state, context_for(TRACE, SPAN), with_state, context_for(TRACE, SPAN, False)):
        one = Headers(list(incoming))
        together.inject(one, ctx)
        turn = Headers(list(incoming))
        for p in each:
            p.inject(turn, ctx)
        assert sorted(one) == sorted(turn)
        assert one.get("tracestate") == ("ours=2" if ctx is with_state else "caller=1")
