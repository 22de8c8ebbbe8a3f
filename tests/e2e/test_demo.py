"""`sidecar demo` as a user runs it: real processes, the diagnosis, before/after numbers,
and nothing left behind (processes or ports), also after Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.demo_run import (
    Demo,
    alive,
    descendants,
    kill_leftovers,
    listening_ports,
    live_in_sessions_or_groups,
    poll,
    port_is_free,
    served_requests,
)

ROUTE = "/context/{user_id}"
ROUTE_OP = "GET /context/{user_id}"
GRPC_METHOD = "demo.retrieval.v1.Retrieval/Retrieve"


def test_quick_demo_names_the_slow_hop_and_measures_the_fix(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    t0 = time.monotonic()
    demo = Demo(["--quick"], workdir)
    try:
        code = demo.wait(timeout=120)
    finally:
        demo.kill()
    elapsed = time.monotonic() - t0
    out = demo.output
    assert code == 0, out[-4000:]
    assert "Traceback" not in out
    text = " ".join(out.split())  # rich wraps long lines at the terminal's width

    # The diagnosis comes from the sidecars' traces (not the Server-Timing fallback) ...
    assert "Trace-based diagnosis unavailable" not in text
    collected = re.search(r"Collected (\d+) traces \((\d+) spans\)", text)
    assert collected and int(collected[1]) > 20, text
    # ... names the hop the demo slowed down, and the calls that need not be sequential.
    assert re.search(
        r"Slowest hop: document-service GET /documents: \d+% of p99 critical path", text
    ), text
    saving = re.search(
        r"user-service, document-service and retrieval-service are called one "
        r"after the other; concurrent (?:would|may) save ~(\d+) ms at p50",
        text,
    )
    assert saving and int(saving[1]) >= 50, text  # user + retrieval take ~75 ms at p50

    # Before/after as printed, and as recorded for scripts.
    result = json.loads((workdir / "result.json").read_text())
    before, after = result["before"], result["after"]
    line = re.search(
        r"before p50 ([\d,]+) ms p99 ([\d,]+) ms → after p50 ([\d,]+) ms "
        r"p99 ([\d,]+) ms",
        text,
    )
    assert line, text
    assert float(line[1].replace(",", "")) == pytest.approx(before["p50_ms"], abs=1)
    assert float(line[3].replace(",", "")) == pytest.approx(after["p50_ms"], abs=1)
    assert result["slowest_hop"] == "document-service"
    assert result["diagnosis_source"] == "traces"
    assert before["requests"] > 20 and after["requests"] > 20
    assert before["errors"] == after["errors"] == 0
    # Concurrent calls hide user- and retrieval-service behind document-service.
    assert after["p50_ms"] < before["p50_ms"] - 30

    # The HTML report: written, and its path printed.
    report = Path(result["report"])
    assert f"Diagnosis report: {report}" in text
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "document-service" in html

    # The retrieval hop is gRPC: diagnosis and report name the method; the spans carry the
    # status code; the sidecars' rpc histograms counted every call as OK.
    assert f"retrieval-service {GRPC_METHOD}" in text and GRPC_METHOD in html
    grpc_codes = {
        tag["value"]
        for trace in json.loads((workdir / "traces.json").read_text())["data"]
        for span in trace["spans"]
        for tag in span.get("tags", [])
        if tag["key"] == "rpc.grpc.status_code"
    }
    assert grpc_codes == {0}
    bff_grpc = {
        c["status"]: c["calls"]
        for c in result["grpc"]
        if c["service"] == "bff" and c["side"] == "client"
    }
    assert set(bff_grpc) == {"OK"} and bff_grpc["OK"] >= before["requests"] + after["requests"]
    assert "gRPC calls as the sidecars counted them" in text

    # Every hop is counted once per request, not once per sidecar it crossed.
    diag = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "diagnose",
            "--file",
            str(workdir / "traces.json"),
            "--service",
            "bff",
            "--operation",
            ROUTE_OP,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(diag.stdout)
    traces = doc["latency_ms"]["count"]
    assert {h["service"]: h["count"] for h in doc["hops"]} == {
        "user-service": traces,
        "document-service": traces,
        "retrieval-service": traces,
    }
    assert f"retrieval-service {GRPC_METHOD}" in {h["name"] for h in doc["hops"]}

    # The same diagnosis piped into an 80-column CI log keeps every hop name whole.
    narrow = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "diagnose",
            "--file",
            str(workdir / "traces.json"),
            "--service",
            "bff",
            "--operation",
            ROUTE_OP,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, narrow.stdout
    for h in doc["hops"]:
        assert any(line.startswith(h["name"]) for line in lines), narrow.stdout

    assert elapsed < 60, f"--quick took {elapsed:.0f}s"
    topology = demo.topology()
    assert not [pid for pid in topology["pids"].values() if alive(pid)]
    assert not live_in_sessions_or_groups(topology["pids"].values())
    assert not [p for p in ports_of(topology) if not port_is_free(p)]


@pytest.mark.parametrize(
    ("moment", "tty"),
    [("starting", False), ("under-load", False), ("under-load", True)],
    ids=["starting", "under-load", "under-load-on-a-terminal"],
)
def test_ctrl_c_stops_everything_it_started(tmp_path: Path, moment: str, tty: bool) -> None:
    workdir = tmp_path / "demo"
    demo = Demo(["--quick"], workdir, tty=tty)
    try:
        if moment == "starting":  # every child spawned, none known ready yet
            poll("topology.json", (workdir / "topology.json").exists, timeout=60, interval=0.01)
        else:
            demo.wait_for_line("ready in", timeout=60)
            bff_admin = f"http://127.0.0.1:{demo.topology()['services']['bff']['admin']}"
            poll("load through the bff", lambda: served_requests(bff_admin, ROUTE) > 0, 30)
        topology = demo.topology()
        children = descendants(demo.proc.pid)
        recorded = set(topology["pids"].values())
        assert recorded <= {p.pid for p in children}, (recorded, children)
        ports = ports_of(topology)
        if moment == "under-load":  # all sixteen listeners are up: check /proc agrees
            # (read again until it does: on a loaded machine one /proc read can miss a socket)
            pids = [p.pid for p in children]
            poll("every listener in /proc", lambda: listening_ports(pids) == ports, timeout=10)
        groups = {p.sid for p in children} | {p.pgid for p in children} | {demo.proc.pid}

        t0 = time.monotonic()
        demo.interrupt()
        code = demo.wait(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        demo.kill()
    survivors = [p for p in children if alive(p.pid)]
    escaped = live_in_sessions_or_groups(groups)
    bound = [p for p in ports if not port_is_free(p)]
    kill_leftovers(survivors + escaped)
    out = demo.output
    assert code == 130, out[-4000:]
    assert "interrupted" in out
    assert "Traceback" not in out
    assert stopped_in < 10, f"took {stopped_in:.1f}s to stop after Ctrl-C"
    assert not survivors, "children outlived the demo"
    assert not escaped, "a (grand)child escaped the stop"
    assert not bound, "ports still bound"
    for log in workdir.glob("*.log"):  # children are stopped, not killed mid-stack
        assert "Traceback" not in log.read_text(errors="replace"), log.name


def ports_of(topology: dict[str, dict[str, dict[str, int]]]) -> set[int]:
    ports = {port for svc in topology["services"].values() for port in svc.values()}
    assert len(ports) == 16, topology
    return ports
