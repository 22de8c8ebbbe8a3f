"""Render one run's results (a JSON-able dict built by bench.run) as Markdown, with ratios
and the issue's targets checked."""

from __future__ import annotations

from typing import Any

TARGET_ORDER = ("direct", "nginx", "envoy", "minimal", "sidecar")
LABELS = {
    "direct": "direct (wrk → upstream nginx)",
    "nginx": "nginx proxy_pass (1 worker, keepalive)",
    "envoy": "Envoy (1 worker, same resilience settings)",
    "minimal": "minimal aiohttp proxy (uvloop)",
    "sidecar": "sidecar (outbound, realistic config)",
}
H2_LABELS = {
    "direct": "direct (h2load → h2c nginx)",
    "envoy": "Envoy, HTTP/2 (1 worker, h2c upstream)",
    "sidecar": "sidecar, HTTP/2 (outbound, h2c upstream)",
}
MIB = 1024 * 1024


def _ms(us: int | float | None) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _get(results: dict[str, Any], target: str, conns: int, key: str) -> Any:
    run = results["targets"].get(target, {}).get("runs", {}).get(str(conns))
    return None if run is None else run[key]


def cpu_us_per_request(results: dict[str, Any], target: str) -> float | None:
    cpu = results["targets"].get(target, {}).get("cpu_s_per_1k")
    return None if cpu is None else cpu * 1000.0


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The data path's targets, each with the measured figure and ok/not. Envoy is the peer to
    beat; nginx is reported as the practical limit of one core."""
    checks: list[dict[str, Any]] = []
    side_rps = _get(results, "sidecar", 32, "rps")
    nginx_rps = _get(results, "nginx", 32, "rps")
    envoy_rps = _get(results, "envoy", 32, "rps")
    if side_rps and envoy_rps:
        ratio = side_rps / envoy_rps
        checks.append(
            {
                "target": "sidecar rps ≥ 1.0x Envoy's at c=32 (must; aim 1.5x)",
                "measured": f"{ratio:.2f}x",
                "ok": ratio >= 1.0,
            }
        )
        side256 = _get(results, "sidecar", 256, "rps")
        envoy256 = _get(results, "envoy", 256, "rps")
        if side256 and envoy256:
            checks.append(
                {
                    "target": "sidecar rps ≥ Envoy's at c=256",
                    "measured": f"{side256 / envoy256:.2f}x",
                    "ok": side256 >= envoy256,
                }
            )
        side_us = cpu_us_per_request(results, "sidecar")
        envoy_us = cpu_us_per_request(results, "envoy")
        if side_us is not None and envoy_us is not None:
            checks.append(
                {
                    "target": "sidecar CPU µs/request ≤ Envoy's",
                    "measured": f"{side_us:.1f} vs {envoy_us:.1f} µs",
                    "ok": side_us <= envoy_us,
                }
            )
    if side_rps and nginx_rps:
        checks.append(
            {
                "target": "sidecar rps vs nginx at c=32 (the practical limit of one core)",
                "measured": f"{side_rps / nginx_rps:.1%}",
                "ok": True,
            }
        )
    side = _get(results, "sidecar", 1, "p50_us")
    direct = _get(results, "direct", 1, "p50_us")
    if side is not None and direct is not None:
        added = (side - direct) / 1000
        checks.append(
            {
                "target": "added p50 latency over direct at c=1 ≤ 0.3 ms",
                "measured": f"{added:.3f} ms",
                "ok": added <= 0.3,
            }
        )
    side99 = _get(results, "sidecar", 1, "p99_us")
    direct99 = _get(results, "direct", 1, "p99_us")
    envoy99 = _get(results, "envoy", 1, "p99_us")
    if side99 is not None and direct99 is not None and envoy99 is not None:
        added, envoy_added = (side99 - direct99) / 1000, (envoy99 - direct99) / 1000
        checks.append(
            {
                "target": "added p99 latency over direct at c=1 ≤ Envoy's",
                "measured": f"{added:.3f} vs {envoy_added:.3f} ms",
                "ok": added <= envoy_added,
            }
        )
    idle = results["targets"].get("sidecar", {}).get("idle")
    if idle:
        rss = idle["rss_with_idle_bytes"] / MIB
        checks.append(
            {
                "target": f"RSS with {idle['connections']} idle keep-alive connections ≤ 60 MiB",
                "measured": f"{rss:.1f} MiB",
                "ok": rss <= 60 and idle["connections"] >= 1000,
            }
        )
    by_balancer: dict[str, list[float]] = {}
    for row in results.get("pick", []):
        by_balancer.setdefault(row["balancer"], []).append(row["pick_ns"])
    for name, costs in sorted(by_balancer.items()):
        spread = max(costs) / min(costs)
        checks.append(
            {
                "target": f"{name} pick cost flat within 2x from 3 to 1 000 endpoints",
                "measured": f"{spread:.2f}x",
                "ok": spread <= 2.0,
            }
        )
    h2_targets = results.get("h2", {}).get("targets", {})
    side_h2 = h2_targets.get("sidecar", {}).get("best", {}).get("rps")
    envoy_h2 = h2_targets.get("envoy", {}).get("best", {}).get("rps")
    if side_h2 and envoy_h2:
        checks.append(
            {
                "target": "HTTP/2: sidecar rps ≥ 0.4x Envoy's (floor; aim 1.0x)",
                "measured": f"{side_h2 / envoy_h2:.2f}x",
                "ok": side_h2 / envoy_h2 >= 0.4,
            }
        )
    errors = results.get("errors", [])
    checks.append(
        {
            "target": "every response 2xx under load",
            "measured": "yes" if not errors else f"{len(errors)} run(s) with errors",
            "ok": not errors,
        }
    )
    return checks


def main_table(results: dict[str, Any]) -> str:
    head = (
        "| target | rps c=32 | rps c=256 | p50 c=1 ms | p99 c=1 ms | p50 c=32 ms | p99 c=32 ms "
        "| rps vs nginx (c=32) | rps vs Envoy (c=32) | CPU µs / request | RSS 1k idle conns MiB |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    nginx = _get(results, "nginx", 32, "rps")
    envoy = _get(results, "envoy", 32, "rps")
    for target in TARGET_ORDER:
        data = results["targets"].get(target)
        if data is None:
            continue
        rps32 = _get(results, target, 32, "rps")
        rps256 = _get(results, target, 256, "rps")
        idle = data.get("idle")
        cpu = data.get("cpu_s_per_1k")
        proxied = target != "direct"
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[target],
                    "-" if rps32 is None else f"{rps32:,.0f}",
                    "-" if rps256 is None else f"{rps256:,.0f}",
                    _ms(_get(results, target, 1, "p50_us")),
                    _ms(_get(results, target, 1, "p99_us")),
                    _ms(_get(results, target, 32, "p50_us")),
                    _ms(_get(results, target, 32, "p99_us")),
                    _ratio(rps32, nginx) if proxied else "-",
                    _ratio(rps32, envoy) if proxied else "-",
                    "-" if cpu is None else f"{cpu * 1000:.1f}",
                    "-" if not idle else f"{idle['rss_with_idle_bytes'] / MIB:.1f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def added_latency(results: dict[str, Any]) -> str:
    lines = ["| proxy | added p50 c=1 ms | added p99 c=1 ms |", "|---|---:|---:|"]
    d50 = _get(results, "direct", 1, "p50_us")
    d99 = _get(results, "direct", 1, "p99_us")
    for target in TARGET_ORDER[1:]:
        p50 = _get(results, target, 1, "p50_us")
        p99 = _get(results, target, 1, "p99_us")
        if p50 is None or d50 is None:
            continue
        lines.append(f"| {LABELS[target]} | {_ms(p50 - d50)} | {_ms(p99 - d99)} |")
    return "\n".join(lines)


def h2_table(results: dict[str, Any]) -> str:
    h2 = results.get("h2", {})
    targets = h2.get("targets", {})
    lines = [
        "| target | rps | mean latency ms | rps vs Envoy | CPU µs / request |",
        "|---|---:|---:|---:|---:|",
    ]
    envoy = targets.get("envoy", {}).get("best", {}).get("rps")
    for name, label in H2_LABELS.items():
        data = targets.get(name)
        if not data or "best" not in data:
            continue
        best = data["best"]
        cpu = data.get("cpu_us_per_request")
        lines.append(
            f"| {label} | {best['rps']:,.0f} | {best['mean_us'] / 1000:.3f} | "
            f"{_ratio(best['rps'], envoy) if name != 'direct' else '-'} | "
            f"{'-' if cpu is None else f'{cpu:.1f}'} |"
        )
    return "\n".join(lines)


def pick_table(results: dict[str, Any]) -> str:
    lines = [
        "| balancer | endpoints | pick ns | pick+observe ns | available()+pick ns |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results.get("pick", []):
        lines.append(
            f"| {row['balancer']} | {row['endpoints']:,} | {row['pick_ns']:,.0f} | "
            f"{row['pick_observe_ns']:,.0f} | {row['available_pick_ns']:,.0f} |"
        )
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    out = [
        "# Benchmark results",
        "",
        f"Run {env['started']} on {env['cpu']} ({env['cores']} cores), sidecar at "
        f"`{env['sidecar_commit']}`. {env['pinning']}. wrk {env['wrk']} `-t1`, "
        f"{env['duration_s']} s per point after {env['warmup_s']} s warm-up, best of "
        f"{env['rounds']} interleaved round(s) by rps; "
        f"sidecar tracing: {env['tracing']}. Absolute figures move ±20 % between runs; "
        "compare ratios within one run.",
        "",
        main_table(results),
        "",
        "Added latency over direct (same run):",
        "",
        added_latency(results),
        "",
        "Targets:",
        "",
        "| target | measured | ok |",
        "|---|---:|:---:|",
    ]
    out += [
        f"| {c['target']} | {c['measured']} | {'yes' if c['ok'] else '**NO**'} |"
        for c in results["checks"]
    ]
    h2 = results.get("h2")
    if h2 and h2.get("targets"):
        out += [
            "",
            f"HTTP/2 (h2load `-t1 -c{h2['clients']} -m{h2['streams']}`: {h2['clients']} "
            f"connections x {h2['streams']} concurrent streams, same run, same cores; the "
            "upstream is nginx `listen … http2` in cleartext). CPU is the proxy's (the "
            "upstream's for direct):",
            "",
            h2_table(results),
        ]
    out += [
        "",
        f"Balancer pick cost (found via {results.get('pick_source', '?')}; best of repeats):",
        "",
        pick_table(results),
        "",
    ]
    side = results["targets"].get("sidecar", {})
    if side.get("metrics_families") is not None:
        out += [
            f"Sidecar admin `/metrics` exposed {side['metrics_families']} metric families "
            f"after the run ({', '.join(side.get('layers_seen', [])) or 'no data-path metrics'}).",
            "",
        ]
    errors = results.get("errors", [])
    out.append("Errors under load: " + ("none." if not errors else "; ".join(errors)))
    return "\n".join(out) + "\n"
