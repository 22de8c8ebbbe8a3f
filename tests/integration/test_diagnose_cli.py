"""`sidecar diagnose` as a real process against the Jaeger query-API double."""

from __future__ import annotations

import asyncio
import json
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


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
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
    assert ("user-service, document-service and retrieval-service are called one after the "
            "other; concurrent may save ~30 ms at p50 if none needs another's answer") in out
    assert any(path == "/api/traces" and q.get("operation") == "GET /context/{user_id}"
               for path, q in jaeger.requests)


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
        "user-service", "document-service", "retrieval-service"}


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
    builders = [meshed([(USER, 1, 20), (DOCS, 22, 60 if i < 49 else 120), (RETR, 23 + 60, 10)],
                       total_ms=95 if i < 49 else 155, base_ms=i * 1000) for i in range(50)]
    args = ("--service", "bff", "--operation", "GET /context/{user_id}")
    async with JaegerDouble(traces(builders)) as jaeger:
        code, out, err = await run_cli("--jaeger", jaeger.url, *args)
        assert code == 0, err
        code_json, out_json, err_json = await run_cli("--jaeger", jaeger.url, *args, "--json")
    assert "document-service GET /documents/{id}: " in out
    assert ("user-service, document-service and retrieval-service are called one after the "
            "other; concurrent may save ~30 ms at p50 if none needs another's answer"
            ) in " ".join(out.split())
    assert code_json == 0, err_json
    doc = json.loads(out_json)
    assert doc["slowest_hop"]["hop"] == "document-service GET /documents/{id}"
    assert {h["service"]: h["count"] for h in doc["hops"]} == {
        "user-service": 50, "document-service": 50, "retrieval-service": 50}
    [seq] = doc["sequential_calls"]
    assert seq["saving_ms_p50"] == pytest.approx(30, abs=1) and seq["traces"] == 50


async def test_unreachable_jaeger_with_json_prints_no_half_document() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli("--jaeger", url, "--service", "bff", "--json")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach {url}/api/traces")
