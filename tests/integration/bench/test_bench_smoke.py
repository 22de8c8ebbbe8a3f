"""Smoke of the benchmark harness: `python -m bench.run --smoke` runs every scenario for a
second each against real nginx, Envoy, wrk, the minimal proxy and the sidecar, plus the HTTP/2
row (h2load through the sidecar and Envoy to an h2c nginx), and writes the table and JSON. The
full run (`make bench`) is not part of the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[3]
H2_ROWS = (
    "direct (h2load → h2c nginx)",
    "Envoy, HTTP/2 (1 worker, h2c upstream)",
    "sidecar, HTTP/2 (outbound, h2c upstream)",
)
ROWS = (
    "direct (wrk → upstream nginx)",
    "nginx proxy_pass (1 worker, keepalive)",
    "Envoy (1 worker, same resilience settings)",
    "minimal aiohttp proxy (uvloop)",
    "sidecar (outbound, realistic config)",
)


def test_smoke_run_writes_table_and_json_with_every_scenario(tmp_path: Path) -> None:
    require_binary("wrk")
    require_binary("nginx")
    require_binary("h2load")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"

    table = (tmp_path / "latest.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in table
    assert "Balancer pick cost" in table
    assert "Errors under load: none." in table

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["errors"] == []
    assert set(results["targets"]) == {"direct", "nginx", "envoy", "minimal", "sidecar"}
    for name, target in results["targets"].items():
        for conns in ("1", "32", "256"):
            run = target["runs"][conns]
            assert run["requests"] > 0, (name, conns)
            assert run["status"] == 0 and run["timeout"] == 0, (name, conns, run)
            assert 0 < run["p50_us"] <= run["p99_us"], (name, conns, run)
        if name != "direct":
            assert target["idle"]["connections"] == 100
            assert target["idle"]["rss_with_idle_bytes"] > 0
            assert target["cpu_s_per_1k"] > 0
    sizes = {row["endpoints"] for row in results["pick"]}
    assert sizes == {3, 100, 1000}
    assert any(row["balancer"] == "round_robin" for row in results["pick"])
    assert {c["target"] for c in results["checks"]} >= {
        "every response 2xx under load",
        "sidecar rps ≥ 1.0x Envoy's at c=32 (must; aim 1.5x)",
        "sidecar CPU µs/request ≤ Envoy's",
    }

    # The HTTP/2 row: every h2load request answered 2xx through each target, CPU per request.
    for row in H2_ROWS:
        assert f"| {row} |" in table
    h2 = results["h2"]["targets"]
    assert set(h2) == {"direct", "envoy", "sidecar"}
    for name, target in h2.items():
        best = target["best"]
        # With -D, h2load may count one 2xx more than "done" (a reply at the deadline).
        assert best["succeeded"] >= best["requests"] > 0, (name, best)
        assert best["failed"] == best["errored"] == best["timeout"] == 0, (name, best)
        assert best["rps"] > 0 and target["cpu_us_per_request"] > 0, (name, target)
    assert "HTTP/2: sidecar rps ≥ 0.4x Envoy's (floor; aim 1.0x)" in {
        c["target"] for c in results["checks"]
    }
