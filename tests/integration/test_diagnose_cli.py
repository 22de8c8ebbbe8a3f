"""`sidecar diagnose` as a real process against the Jaeger query-API double."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.doubles.jaeger import JaegerDouble
from tests.unit.diagnose.builder import (
    DOCS,
    RETR,
    USER,
    concurrent_fanout,
    jaeger_response,
    meshed,
    rebase,
    repeats,
    sequential_chain,
)

ROOT = Path(__file__).resolve().parents[2]
ENTRY = (
    "import argparse, sys\n"
    "from sidecar.diagnose import command\n"
    "p = argparse.ArgumentParser(prog='sidecar diagnose')\n"
    "command.configure(p)\n"
    "sys.exit(command.main(p.parse_args(sys.argv[1:])))\n"
)


async def run_cli(*args: str, columns: int | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENTRY,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def traces(builders: list) -> list:  # type: ignore[type-arg]
    return rebase(jaeger_response(builders), int(time.time() * 1e6))["data"]


async def test_names_the_slowest_hop_and_the_sequential_calls() -> None:
    async with JaegerDouble(traces(sequential_chain(100))) as jaeger:
        code, out, err = await run_cli(
            "--jaeger", jaeger.url, "--service", "bff", "--operation", "GET /context/{user_id}"
        )
    assert code == 0, err
    out = " ".join(out.split())  # findings wrap at the reader's width
    assert "document-service GET /documents/{id}: 77% of p99 critical path" in out
    assert (
        "user-service, document-service and retrieval-service are called one after the "
        "other; concurrent may save ~30 ms at p50 if none needs another's answer"
    ) in out
    assert any(
        path == "/api/traces" and q.get("operation") == "GET /context/{user_id}"
        for path, q in jaeger.requests
    )


async def test_json_output_is_valid_and_stable() -> None:
    async with JaegerDouble(traces(concurrent_fanout(40))) as jaeger:
        code, out, err = await run_cli(
            "--jaeger", jaeger.url, "--service", "bff", "--operation", "GET /context", "--json"
        )
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:4] == ["version", "service", "operation", "latency_ms"]
    assert doc["operation"] == "GET /context/{user_id}"
    assert doc["slowest_hop"]["hop"] == "document-service GET /documents/{id}"
    assert doc["sequential_calls"] == []
    assert doc["latency_ms"]["count"] == 40
    assert {h["service"] for h in doc["hops"]} == {
        "user-service",
        "document-service",
        "retrieval-service",
    }


async def test_unreachable_jaeger_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli("--jaeger", url, "--service", "bff")
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach"), err
    assert "Traceback" not in err


async def test_empty_source_and_usage_errors() -> None:
    async with JaegerDouble([]) as jaeger:
        code, _, err = await run_cli("--jaeger", jaeger.url, "--service", "bff")
    assert code == 1 and err.strip() == "error: no traces found for service 'bff' in the last 15m"
    code, _, err = await run_cli("--service", "bff")
    assert code == 2 and "exactly one trace source" in err
    code, _, err = await run_cli("--file", "x.json", "--service", "bff", "--lookback", "soon")
    assert code == 2 and "--lookback" in err


async def test_traces_recorded_by_a_sidecar_mesh_text_and_json() -> None:
    """The demo's shape (every service behind its own sidecar): the same answers, and one
    call per hop per request."""
    builders = [
        meshed(
            [(USER, 1, 20), (DOCS, 22, 60 if i < 49 else 120), (RETR, 23 + 60, 10)],
            total_ms=95 if i < 49 else 155,
            base_ms=i * 1000,
        )
        for i in range(50)
    ]
    args = ("--service", "bff", "--operation", "GET /context/{user_id}")
    async with JaegerDouble(traces(builders)) as jaeger:
        code, out, err = await run_cli("--jaeger", jaeger.url, *args)
        assert code == 0, err
        code_json, out_json, err_json = await run_cli("--jaeger", jaeger.url, *args, "--json")
    assert "document-service GET /documents/{id}: " in out
    assert (
        "user-service, document-service and retrieval-service are called one after the "
        "other; concurrent may save ~30 ms at p50 if none needs another's answer"
    ) in " ".join(out.split())
    assert code_json == 0, err_json
    doc = json.loads(out_json)
    assert doc["slowest_hop"]["hop"] == "document-service GET /documents/{id}"
    assert {h["service"]: h["count"] for h in doc["hops"]} == {
        "user-service": 50,
        "document-service": 50,
        "retrieval-service": 50,
    }
    [seq] = doc["sequential_calls"]
    assert seq["saving_ms_p50"] == pytest.approx(30, abs=1) and seq["traces"] == 50


async def test_unreachable_jaeger_with_json_prints_no_half_document() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli("--jaeger", url, "--service", "bff", "--json")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach {url}/api/traces")


FIXTURES = ROOT / "tests" / "fixtures" / "traces"


async def test_otlp_file_piped_at_80_columns_keeps_every_hop_name() -> None:
    code, out, err = await run_cli(
        "--file", str(FIXTURES / "dispatch.otlp.jsonl"), "--service", "frontend", columns=80
    )
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in (
        "customer HTTP GET /customer",
        "mysql SQL SELECT",
        "driver /driver.DriverService/FindNearest",
        "redis FindDriverIDs",
        "redis GetDriver",
        "route HTTP GET /route",
    ):
        assert any(line.startswith(name) for line in lines), out
    text = " ".join(out.split())
    assert "critical path: frontend → driver → redis GetDriver \u00d712" in text
    assert "in frontend → driver: redis GetDriver is called 12 times one after the other" in text


async def test_baseline_file_names_the_nested_pattern_that_grew(tmp_path: Path) -> None:
    base, now = tmp_path / "base.json", tmp_path / "now.json"
    base.write_text(json.dumps(jaeger_response([repeats(3, base_ms=i * 1000) for i in range(10)])))
    now.write_text(json.dumps(jaeger_response([repeats(12, base_ms=i * 1000) for i in range(10)])))
    args = ("--file", str(now), "--service", "bff", "--baseline", str(base))
    code, out, err = await run_cli(*args)
    assert code == 0, err
    text = " ".join(out.split())
    assert "Compared with the baseline 10 traces p50 13 ms → 32 ms" in text
    assert (
        "grew: in bff → document-service, cache GET /k called one after the other: 3 → 12 times"
    ) in text
    code, out, err = await run_cli(*args, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["baseline"]["traces"] == 10
    assert "cache GET /k" in doc["baseline"]["changes"][0]["subject"]
    assert doc["repeated_calls"][0]["calls"] == 12


async def test_baseline_window_is_asked_from_jaeger() -> None:
    now_us = int(time.time() * 1e6)
    current = rebase(jaeger_response([repeats(12, base_ms=i * 1000) for i in range(10)]), now_us)[
        "data"
    ]
    past = rebase(
        jaeger_response([repeats(3, base_ms=i * 1000) for i in range(10)]),
        now_us - 90 * 60 * 1_000_000,
    )["data"]
    async with JaegerDouble(current + past) as jaeger:
        code, out, err = await run_cli(
            "--jaeger",
            jaeger.url,
            "--service",
            "bff",
            "--lookback",
            "30m",
            "--baseline",
            "2h..1h",
            "--json",
        )
        windows = [
            (int(q["start"]), int(q["end"])) for p, q in jaeger.requests if p == "/api/traces"
        ]
    assert code == 0, err
    doc = json.loads(out)
    assert doc["latency_ms"]["count"] == 10 and doc["baseline"]["traces"] == 10
    assert doc["repeated_calls"][0]["calls"] == 12
    assert any(
        c["before_calls"] == 3 and c["after_calls"] == 12 for c in doc["baseline"]["changes"]
    )
    (now_start, now_end), (base_start, base_end) = windows
    assert now_end - now_start == 30 * 60 * 1_000_000
    assert base_end - base_start == 3600 * 1_000_000
    assert abs(now_end - 3600 * 1_000_000 - base_end) < 60 * 1_000_000


async def test_baseline_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(jaeger_response(sequential_chain(3))))
    code, _, err = await run_cli("--file", str(path), "--service", "bff", "--baseline", "2h..1h")
    assert code == 2 and "without --jaeger" in err
    code, _, err = await run_cli(
        "--jaeger", "http://127.0.0.1:1", "--service", "bff", "--baseline", "1h..2h"
    )
    assert code == 2 and "must start before it ends" in err
