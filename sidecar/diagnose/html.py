"""`--html`: the diagnosis as one self-contained page — inline CSS and SVG, no scripts, fonts,
images or links to fetch, so it opens offline and can be mailed around.

Colours are from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies) and never the only signal: critical-path bars are also outlined and starred, and
every bar has a hover title with its exact numbers."""

from __future__ import annotations

import math
from html import escape

from sidecar.diagnose.results import Bar, Diagnosis, Pattern, Waterfall

CRITICAL = "#D55E00"  # vermillion, 4.0:1 on white
OTHER = "#0072B2"  # blue, 5.1:1
ROOT = "#4D4D4D"
INK = "#1A1A1A"
GRID = "#D9D9D9"

LABEL_W, CHART_W, NOTE_W = 300, 480, 240
ROW_H, BAR_H, AXIS_H = 26, 16, 28
SVG_W = LABEL_W + CHART_W + NOTE_W
MAX_NOTES = 3  # nested patterns noted under one waterfall; all are in the findings list
NOTE_LINE_H = 20
_MARKS = ("\u2460", "\u2461", "\u2462")  # circled 1, 2, 3

CSS = f"""
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: {INK}; background: #fff; margin: 24px auto; max-width: 1060px; padding: 0 16px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.stats {{ color: #333; margin: 0 0 12px; }}
.stats b {{ color: {INK}; }}
.headline {{ border-left: 6px solid {CRITICAL}; background: #FFF4EC; padding: 10px 14px;
  font-size: 17px; margin: 12px 0; }}
ul.findings {{ padding-left: 20px; margin: 6px 0; }}
ul.findings li {{ margin: 4px 0; }}
.kind {{ display: inline-block; min-width: 150px; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; color: #444; }}
table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
th, td {{ padding: 5px 8px; border-bottom: 1px solid {GRID}; text-align: right; }}
td {{ white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #F2F2F2; }}
tr.slowest td {{ font-weight: 600; }}
svg text {{ font: 13px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: {INK}; }}
svg .small {{ font-size: 11px; }}
.legend span {{ display: inline-block; margin-right: 18px; font-size: 13px; }}
.swatch {{ display: inline-block; width: 14px; height: 12px; vertical-align: -1px;
  margin-right: 5px; }}
footer {{ color: #555; font-size: 13px; margin-top: 28px; }}
"""


def render(d: Diagnosis) -> str:
    lat = d.latency
    scale = max((w.total_ms for w in d.waterfalls), default=0.0) or 1.0
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Latency diagnosis: {escape(d.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(d.name)}</h1>",
        f'<p class="stats"><b>{lat.count}</b> traces &nbsp; p50 <b>{_ms(lat.p50_ms)}</b> &nbsp; '
        f"p95 <b>{_ms(lat.p95_ms)}</b> &nbsp; p99 <b>{_ms(lat.p99_ms)}</b> &nbsp; "
        f"max <b>{_ms(lat.max_ms)}</b></p>",
    ]
    if d.slowest is not None:
        parts.append(
            f'<p class="headline" id="slowest">Slowest hop: {escape(d.slowest.message)}</p>'
        )
    chain = d.critical_chain
    if chain is not None and len(chain.links) > 2:
        parts.append(
            f'<p class="stats" id="critical-chain">Critical path: <b>'
            f"{escape(chain.text)}</b> ({_pct(chain.share_p99)} of the p99 requests' "
            "time)</p>"
        )
    parts.append("<h2>Findings</h2>")
    parts.append(_findings(d))
    parts.append("<h2>Latency distribution</h2>")
    parts.append(_histogram(d))
    parts.append("<h2>Where the time goes</h2>")
    parts.append(
        '<p class="legend">'
        f'<span><i class="swatch" style="background:{CRITICAL};outline:2px solid {INK}"></i>'
        "on the critical path ★</span>"
        f'<span><i class="swatch" style="background:{OTHER}"></i>off the critical path</span>'
        f'<span><i class="swatch" style="background:{ROOT}"></i>the operation</span>'
        "<span>Bars are medians over the traces of each class, on one shared time axis."
        "</span></p>"
    )
    for w in d.waterfalls:
        title = "Typical request (p50)" if w.label == "p50" else "Slow requests (p99 and above)"
        parts.append(f"<h3>{title} — {_ms(w.total_ms)}, {w.traces} traces</h3>")
        parts.append(_waterfall(w, scale, list(d.patterns)))
    parts.append("<h2>Downstream hops</h2>")
    parts.append(_table(d))
    if d.comparison is not None:
        c = d.comparison
        items = "".join(f"<li>{escape(ch.message)}</li>" for ch in c.changes)
        parts.append(
            f'<h2>Compared with the baseline</h2><p class="stats">{c.baseline_traces} '
            f"baseline traces, p50 {_ms(c.baseline_p50_ms)} → {_ms(d.latency.p50_ms)}, "
            f"p99 {_ms(c.baseline_p99_ms)} → {_ms(d.latency.p99_ms)}</p>"
            f'<ul class="findings" id="changes">{items}</ul>'
        )
    cov = d.coverage
    examples = " ".join(
        f"{w.label} example trace <code>{escape(w.example_trace_id)}</code>."
        for w in d.waterfalls
        if w.example_trace_id
    )
    parts.append(
        f"<footer>{cov.traces_analysed} of {cov.traces_seen} traces analysed; "
        f"{cov.traces_with_missing_links} with missing links; "
        f"{cov.skew_adjusted_spans} spans shifted for clock skew. {examples} "
        "Generated by <code>sidecar diagnose</code>.</footer>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _findings(d: Diagnosis) -> str:
    if not d.findings:
        return "<p>Nothing stands out.</p>"
    items = "".join(
        f'<li data-kind="{escape(f.kind)}"><span class="kind">{escape(f.kind.replace("_", " "))}'
        f"</span>{escape(f.message)}</li>"
        for f in d.findings
    )
    return f'<ul class="findings">{items}</ul>'


def _histogram(d: Diagnosis) -> str:
    values = d.durations_ms
    if not values:
        return "<p>No data.</p>"
    hi = max(values) or 1.0
    bins = min(40, max(8, int(math.sqrt(len(values))) * 2))
    width = _nice_step(hi / bins)
    bins = max(1, math.ceil(hi / width + 1e-9))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int(v / width))] += 1
    w, h, left, bottom, top_pad = SVG_W, 200, 50, 30, 44
    plot_w, plot_h = w - left - 20, h - bottom - top_pad
    top = max(counts)
    out = [
        f'<svg id="histogram" role="img" aria-label="latency histogram" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}">'
    ]
    bw = plot_w / bins
    for i, c in enumerate(counts):
        bh = plot_h * c / top
        lo = i * width
        out.append(
            f'<rect class="hist" x="{left + i * bw + 1:.1f}" y="{top_pad + plot_h - bh:.1f}" '
            f'width="{max(bw - 2, 1):.1f}" height="{bh:.1f}" fill="{OTHER}">'
            f"<title>{_ms(lo)} to {_ms(lo + width)}: {c} traces</title></rect>"
        )
    base = top_pad + plot_h
    out.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="{INK}"/>')
    for t in _ticks(bins * width):
        x = left + plot_w * t / (bins * width)
        out.append(
            f'<text class="small" x="{x:.1f}" y="{h - 10}" text-anchor="middle">{_ms(t)}</text>'
        )
    out.append(
        f'<text class="small" x="{left - 8}" y="{top_pad + 6}" text-anchor="end">{top}</text>'
    )
    lat = d.latency
    for i, (name, v) in enumerate((("p50", lat.p50_ms), ("p95", lat.p95_ms), ("p99", lat.p99_ms))):
        x = left + plot_w * v / (bins * width)
        anchor, dx = ("end", -4) if x > left + plot_w * 0.8 else ("start", 4)
        out.append(
            f'<line x1="{x:.1f}" y1="{6 + i * 13}" x2="{x:.1f}" y2="{base}" stroke="{INK}" '
            f'stroke-width="1.5" stroke-dasharray="4 3"><title>{name} = {_ms(v)}</title></line>'
            f'<text class="small" x="{x + dx:.1f}" y="{14 + i * 13}" text-anchor="{anchor}">'
            f"{name} {_ms(v)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _waterfall(w: Waterfall, scale_ms: float, patterns: list[Pattern]) -> str:
    """Sequential calls of the operation itself get a bracket beside their bars, as in
    version 1. Patterns deeper in the tree, and repeated calls, would collide with it and with
    each other there: their bars get a numbered mark and the note a line under the chart."""
    rows = list(w.bars)
    row_of = {bar.name: i for i, bar in enumerate(rows)}
    brackets: list[tuple[Pattern, list[int]]] = []
    notes: list[tuple[Pattern, list[int]]] = []
    for p in patterns:
        members = sorted({row_of[n] for stage in p.stages for n in stage if n in row_of})
        if p.kind == "sequential_calls" and p.depth == 0:
            if len(members) >= 2 and not brackets:
                brackets.append((p, members))
        elif members and len(notes) < MAX_NOTES:
            notes.append((p, members))
    marks: dict[int, list[str]] = {}
    for k, (_, members) in enumerate(notes):
        for i in members:
            marks.setdefault(i, []).append(_MARKS[k])
    h = AXIS_H + ROW_H * len(rows) + 12 + NOTE_LINE_H * len(notes)
    x0 = LABEL_W

    def x(ms_value: float) -> float:
        return x0 + CHART_W * ms_value / scale_ms

    out = [
        f'<svg class="waterfall" id="waterfall-{w.label}" role="img" '
        f'aria-label="{w.label} waterfall" width="{SVG_W}" height="{h}" '
        f'viewBox="0 0 {SVG_W} {h}">'
    ]
    grid_bottom = AXIS_H + ROW_H * len(rows) + 4
    for t in _ticks(scale_ms):
        out.append(
            f'<line x1="{x(t):.1f}" y1="{AXIS_H - 6}" x2="{x(t):.1f}" y2="{grid_bottom}" '
            f'stroke="{GRID}"/><text class="small" x="{x(t):.1f}" y="{AXIS_H - 10}" '
            f'text-anchor="middle">{_ms(t)}</text>'
        )
    extent: dict[int, float] = {}  # right end of each row's bar, labels and marks
    for i, bar in enumerate(rows):
        y = AXIS_H + i * ROW_H
        bx = x(bar.offset_ms)
        bw = max(2.0, x(bar.offset_ms + bar.duration_ms) - bx)
        mark = " ".join(marks.get(i, ()))
        out.append(_bar(bar, y, bx, bw, mark))
        extent[i] = bx + bw + 50 + (8 + 16 * len(marks.get(i, ()))) * bool(mark)
    for p, members in brackets:
        first, last = min(members), max(members)
        y1, y2 = AXIS_H + first * ROW_H + 3, AXIS_H + last * ROW_H + ROW_H - 3
        bx = min(max(extent[i] for i in range(first, last + 1)) + 6, SVG_W - 170)
        mid = (y1 + y2) / 2
        fix = "concurrent would" if p.independent else "concurrent may"
        out.append(
            f'<g class="pattern-note sequential-note" data-path="{escape(" > ".join(p.path))}" '
            f'data-saving-ms="{p.saving_ms}"><title>{escape(p.finding.message)}</title>'
            f'<path d="M{bx - 6:.1f} {y1} H{bx:.1f} V{y2} H{bx - 6:.1f}" fill="none" '
            f'stroke="{INK}" stroke-width="2"/>'
            f'<text x="{bx + 8:.1f}" y="{mid - 12:.1f}">one after the other;</text>'
            f'<text x="{bx + 8:.1f}" y="{mid + 4:.1f}" font-weight="600">{fix}</text>'
            f'<text x="{bx + 8:.1f}" y="{mid + 20:.1f}" font-weight="600">'
            f"save ~{_saving(p.saving_ms)} at p50</text></g>"
        )
    for k, (p, _) in enumerate(notes):
        y = grid_bottom + 8 + NOTE_LINE_H * k + 12
        where = " → ".join(part.split(" ", 1)[0] for part in p.path)
        if p.kind == "repeated_calls":
            what = f"{p.hop} \u00d7{p.calls} one after the other"
            fix = "batched or concurrent " + ("would" if p.independent else "may")
        else:
            what = " then ".join(" + ".join(stage) for stage in p.stages)
            fix = "concurrent " + ("would" if p.independent else "may")
        cls = "repeated-note" if p.kind == "repeated_calls" else "sequential-note"
        out.append(
            f'<g class="pattern-note {cls}" data-path="{escape(" > ".join(p.path))}" '
            f'data-saving-ms="{p.saving_ms}" data-mark="{_MARKS[k]}">'
            f"<title>{escape(p.finding.message)}</title>"
            f'<text x="8" y="{y}"><tspan font-weight="600">{_MARKS[k]}</tspan> in '
            f'{escape(where)}: {escape(what)}; <tspan font-weight="600">{fix} save '
            f"~{_saving(p.saving_ms)} at p50</tspan></text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def _bar(bar: Bar, y: int, bx: float, bw: float, mark: str = "") -> str:
    colour = ROOT if bar.depth == 0 else CRITICAL if bar.critical else OTHER
    star = " ★" if bar.critical and bar.depth > 0 else ""
    retries = f" \u00d7{bar.calls}" if bar.calls > 1 else ""
    label = _clip(bar.name, 38 - 2 * bar.depth) + retries + star
    outline = f' stroke="{INK}" stroke-width="2"' if bar.critical and bar.depth > 0 else ""
    tip = (
        f"{bar.name}: starts at {_ms(bar.offset_ms)}, takes {_ms(bar.duration_ms)}"
        f"{', on the critical path' if bar.critical else ''}"
        f"{f', {bar.calls} calls per request' if bar.calls > 1 else ''}"
    )
    duration = _ms(bar.duration_ms)
    marked = (
        f'<text class="pattern-mark" font-weight="600" '
        f'x="{bx + bw + 12 + 6.5 * len(duration):.1f}" y="{y + BAR_H - 2}">{mark}</text>'
        if mark
        else ""
    )
    return (
        f'<g class="bar" data-name="{escape(bar.name)}" data-offset-ms="{bar.offset_ms}" '
        f'data-duration-ms="{bar.duration_ms}" data-critical="{str(bar.critical).lower()}" '
        f'data-sequential="{str(bar.sequential).lower()}" '
        f'data-repeated="{str(bar.repeated).lower()}"><title>{escape(tip)}</title>'
        f'<text x="{8 + 14 * bar.depth}" y="{y + BAR_H - 2}">{escape(label)}</text>'
        f'<rect x="{bx:.1f}" y="{y + (ROW_H - BAR_H) / 2 - 3:.1f}" width="{bw:.1f}" '
        f'height="{BAR_H}" rx="2" fill="{colour}"{outline}/>'
        f'<text class="small" x="{bx + bw + 5:.1f}" y="{y + BAR_H - 2}">'
        f"{duration}</text>{marked}</g>"
    )


def _table(d: Diagnosis) -> str:
    head = (
        "hop",
        "calls",
        "p50",
        "p99",
        "self p50",
        "gap p50",
        "critical path (p99)",
        "critical path (all)",
        "errors",
        "retries",
        "timeouts",
        "breaker",
    )
    rows = []
    slowest = d.slowest.hop if d.slowest is not None else None
    for h in d.hops:
        cls = ' class="slowest"' if h.name == slowest else ""
        gap = _ms(h.gap_p50_ms) if h.gap_calls else "-"
        cells = (
            escape(h.name),
            h.count,
            _ms(h.p50_ms),
            _ms(h.p99_ms),
            _ms(h.self_p50_ms),
            gap,
            _pct(h.critical_share_p99),
            _pct(h.critical_share),
            h.errors,
            h.retries,
            h.timeouts,
            h.breaker_rejections,
        )
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append(
        f"<tr><td>{escape(d.service)} (own work)</td><td></td><td></td><td></td><td></td>"
        "<td></td>"
        f"<td>{_pct(d.root_self_share_p99)}</td><td>{_pct(d.root_self_share)}</td>"
        "<td></td><td></td><td></td><td></td></tr>"
    )
    header = "".join(f"<th>{c}</th>" for c in head)
    body = "".join(rows)
    return f'<table id="hops"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * exp:
            return m * exp
    return 10 * exp


def _ticks(span: float, target: int = 6) -> list[float]:
    step = _nice_step(span / target)
    n = int(span / step + 1e-9)
    return [round(i * step, 6) for i in range(n + 1)]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ms(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def _saving(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"
