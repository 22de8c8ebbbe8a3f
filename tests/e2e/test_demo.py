"""`sidecar demo --quick` as a user runs it: real processes, the diagnosis, before/after
numbers, and nothing left behind (processes or ports), also after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO = [sys.executable, "-m", "sidecar.cli", "demo"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"  # a zombie nobody reaped has already exited


def assert_nothing_left(workdir: Path) -> None:
    topology = json.loads((workdir / "topology.json").read_text())
    pids = topology["pids"]
    assert len(pids) == 8, pids
    survivors = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not survivors, f"processes outlived the demo: {survivors}"
    for service, ports in topology["services"].items():
        for kind, port in ports.items():
            with socket.socket() as s:  # bind fails if anything still listens there
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
            assert kind and service


def test_quick_demo_names_the_slow_hop_and_measures_the_fix(tmp_path):
    workdir = tmp_path / "demo"
    t0 = time.monotonic()
    r = subprocess.run(
        [*DEMO, "--quick", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "Slowest hop" in out and "document-service" in out
    assert "before" in out and "after" in out and "p50" in out and "p99" in out
    result = json.loads((workdir / "result.json").read_text())
    assert result["slowest_hop"] == "document-service"
    before, after = result["before"], result["after"]
    assert before["requests"] > 20 and after["requests"] > 20
    # concurrent calls hide user- and retrieval-service behind document-service
    assert after["p50_ms"] < before["p50_ms"]
    assert elapsed < 60, f"--quick took {elapsed:.0f}s"
    assert_nothing_left(workdir)


def test_ctrl_c_stops_everything(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [*DEMO, "--quick", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # wait until the load runs, i.e. all eight children are up
        deadline = time.monotonic() + 60
        seen = ""
        assert proc.stdout is not None
        while "ready in" not in seen:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail(f"demo never became ready:\n{seen}")
            seen += line
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert "Traceback" not in seen + rest
    assert_nothing_left(workdir)
