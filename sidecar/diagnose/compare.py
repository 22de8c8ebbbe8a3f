"""`--baseline`: what changed between a baseline window and now, the on-call question. Each
hop is compared by the critical-path time it costs a request (its share times the mean request
duration), each sequential or repeated-calls pattern by what it could save; the largest
changes come first, changes within the noise are left out."""

from __future__ import annotations

from sidecar.diagnose.results import Change, Comparison, Diagnosis, HopStats, Pattern

NOISE_MS = 1.0
NOISE_SHARE = 0.05  # of the baseline's p50
MAX_CHANGES = 8


def compare(now: Diagnosis, base: Diagnosis) -> Comparison:
    noise = max(NOISE_MS, NOISE_SHARE * base.latency.p50_ms)
    # The operation's own latency change is the symptom, shown with the baseline's numbers;
    # the changes list the causes.
    changes = _hop_changes(now, base)
    changes += _pattern_changes(now, base)
    kept = [c for c in changes if abs(c.delta_ms) >= noise]
    kept.sort(key=lambda c: (-abs(c.delta_ms), c.kind == "hop", c.subject))
    return Comparison(
        baseline_traces=base.latency.count,
        baseline_p50_ms=base.latency.p50_ms,
        baseline_p99_ms=base.latency.p99_ms,
        changes=tuple(kept[:MAX_CHANGES]),
    )


def _mean(d: Diagnosis) -> float:
    return sum(d.durations_ms) / len(d.durations_ms) if d.durations_ms else 0.0


def _per_request(h: HopStats | None, d: Diagnosis) -> tuple[float, float]:
    """(critical-path ms per request, calls per request)."""
    if h is None:
        return 0.0, 0.0
    return h.critical_share * _mean(d), h.count / max(1, d.latency.count)


def _hop_changes(now: Diagnosis, base: Diagnosis) -> list[Change]:
    before = {h.name: h for h in base.hops}
    after = {h.name: h for h in now.hops}
    out = []
    for name in sorted(set(before) | set(after)):
        b_ms, b_calls = _per_request(before.get(name), base)
        a_ms, a_calls = _per_request(after.get(name), now)
        detail = []
        if round(b_calls, 1) != round(a_calls, 1):
            detail.append(f"{_calls(b_calls)} → {_calls(a_calls)} calls per request")
        b_p50 = before[name].p50_ms if name in before else 0.0
        a_p50 = after[name].p50_ms if name in after else 0.0
        if b_p50 and a_p50 and abs(a_p50 - b_p50) >= 0.1 * b_p50:
            detail.append(f"p50 per call {_ms(b_p50)} → {_ms(a_p50)}")
        state = "new hop: " if name not in before else "gone: " if name not in after else ""
        extra = f"; {', '.join(detail)}" if detail else ""
        out.append(
            Change(
                "hop",
                name,
                round(b_ms, 3),
                round(a_ms, 3),
                f"{state}{name}: {_ms(b_ms)} → {_ms(a_ms)} of the critical path per request "
                f"({_signed(a_ms - b_ms)}){extra}",
                round(b_calls),
                round(a_calls),
            )
        )
    return out


def _key(p: Pattern) -> tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]]:
    return p.kind, p.path, p.stages


def _pattern_changes(now: Diagnosis, base: Diagnosis) -> list[Change]:
    before = {_key(p): p for p in base.patterns}
    after = {_key(p): p for p in now.patterns}
    out = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        p = a or b
        assert p is not None
        where = " → ".join(x.split(" ", 1)[0] for x in p.path)
        what = (
            f"{p.hop} called one after the other"
            if p.kind == "repeated_calls"
            else "sequential calls " + " then ".join(" + ".join(s) for s in p.stages)
        )
        b_save, a_save = (b.saving_ms if b else 0.0), (a.saving_ms if a else 0.0)
        counts = ""
        if p.kind == "repeated_calls":
            counts = f" {b.calls if b else 0} → {a.calls if a else 0} times,"
        state = (
            "new: "
            if b is None
            else "gone: "
            if a is None
            else "grew: "
            if a_save > b_save
            else "shrank: "
        )
        out.append(
            Change(
                "pattern",
                f"{where}: {p.hop or p.caller}",
                b_save,
                a_save,
                f"{state}in {where}, {what}:{counts} could save {_ms(b_save)} → {_ms(a_save)} "
                f"at p50 ({_signed(a_save - b_save)})",
                b.calls if b else 0,
                a.calls if a else 0,
            )
        )
    return out


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + _ms(abs(value))


def _calls(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
