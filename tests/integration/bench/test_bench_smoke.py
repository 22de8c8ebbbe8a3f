"""Smoke of the benchmark harness: `python -m bench.run --smoke` runs every scenario for a
second each against real nginx, Envoy, wrk, the minimal proxy and the sidecar, and writes the
table and JSON. The full run (`make bench`) is not part of the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[3]
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
