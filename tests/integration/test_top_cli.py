"""`sidecar top` against a real sidecar under traffic: one healthy and one failing upstream."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.top import command
from tests.conftest import free_port
from tests.integration.top_traffic import Busy, busy, drive_grpc, grpc_upstream

ROOT = Path(__file__).resolve().parents[2]
# The `sidecar` console script of the venv running the tests.
SCRIPT = Path(sys.executable).with_name("sidecar")
HAS_SCRIPT = SCRIPT.exists()


@pytest.fixture
async def bff(
    upstreams: Callable[[str], Any], sidecar_factory: Callable[..., Any]
) -> AsyncIterator[Busy]:
    app = await upstreams("app")
    good = await upstreams("good")
    config = {
        "service": {"name": "bff", "port": app.port},
        "discovery": {
            "static": {
                "good": [f"127.0.0.1:{good.port}"],
                "failing": [f"127.0.0.1:{free_port()}"],  # nothing listens: refused
            }
        },
        "metrics": {"route_templates": ["/users/{id}"]},
    }

    def calls(b: Busy) -> list[tuple[str, dict[str, str]]]:
        return [
            (b.inbound + "/users/7", {}),
            (b.outbound + "/users/7", {"Host": "good"}),
            (b.outbound + "/users/7", {"Host": "failing"}),
        ]

    async with busy(sidecar_factory, config, calls) as b:
        yield b


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sidecar top")
    command.configure(parser)
    return parser.parse_args(list(argv))


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def check_snapshot(doc: dict[str, Any]) -> None:
    rows = doc["rows"]
    first = rows[0]
    assert (first["kind"], first["name"]) == ("upstream", "failing"), rows
    assert first["success_rate"] < 1
    good = next(r for r in rows if r["kind"] == "upstream" and r["name"] == "good")
    assert good["rps"] > 0 and good["success_rate"] == 1.0
    assert good["p99_ms"] is not None and good["breaker"] == "closed"
    assert good["endpoints"] == {"healthy": 1, "ejected": 0}
    app = next(r for r in rows if r["kind"] == "inbound")
    assert app["name"] == "bff" and app["rps"] > 0
    assert doc["errors"] == []


async def test_once_json_in_process_puts_the_failing_upstream_first(
    bff: Busy, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = args("--admin", bff.admin, "--once", "--json", "--interval", "0.5")
    code = await asyncio.to_thread(command.main, ns)  # main runs its own event loop
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert 0.5 <= doc["window_s"] < 5
    check_snapshot(doc)


async def test_once_as_a_process_json_and_table(bff: Busy) -> None:
    code, out, err = await run(
        sys.executable,
        "-m",
        "sidecar",
        "top",
        "--admin",
        bff.admin,
        "--once",
        "--json",
        "--interval",
        "0.5",
    )
    assert code == 0, err
    check_snapshot(json.loads(out))

    if not HAS_SCRIPT:
        pytest.skip(f"no console script at {SCRIPT}")
    # the console script, with this tree first on the path (the venv's install may be older)
    code, out, err = await run(
        str(SCRIPT),
        "top",
        "--admin",
        bff.admin,
        "--once",
        "--interval",
        "0.5",
        env={"PYTHONPATH": str(ROOT)},
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("sidecar top · 1/1 sidecars · ")
    body = [line for line in lines if "│" in line]
    assert "failing" in body[0] and "0.00%" in body[0]
    assert any("good" in line and "100%" in line for line in body)


async def test_an_unreachable_admin_is_one_line_and_exit_1() -> None:
    dead = f"127.0.0.1:{free_port()}"
    for extra in ((), ("--json",)):
        code, out, err = await run(
            sys.executable, "-m", "sidecar", "top", "--admin", dead, "--once", *extra
        )
        assert code == 1
        assert out == ""
        assert err.splitlines() == [f"error: cannot reach http://{dead}: Connection refused"]


async def test_one_of_two_admins_down_still_reports_the_other(bff: Busy) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(
        sys.executable,
        "-m",
        "sidecar",
        "top",
        "--admin",
        bff.admin,
        "--admin",
        dead,
        "--json",
        "--interval",
        "0.3",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["errors"] == [{"admin": dead, "error": f"cannot reach {dead}: Connection refused"}]
    assert any(r["name"] == "good" for r in doc["rows"])
    assert err.strip() == f"error: cannot reach {dead}: Connection refused"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert command.main(args("--admin", "127.0.0.1:1", "--interval", "0")) == 2
    assert "--interval must be between" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        args("--interval", "1")
    assert exit_info.value.code == 2 and "--admin" in capsys.readouterr().err


def _read_until(fd: int, needles: list[str], within: float) -> str:
    seen, deadline = b"", time.monotonic() + within
    while not all(n.encode() in seen for n in needles):
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {needles}: {seen.decode(errors='replace')[-2000:]}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen.decode(errors="replace")


def _drain(fd: int) -> str:
    """What the exited child left in the terminal (EIO once it is all read)."""
    seen = b""
    while select.select([fd], [], [], 1.0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


async def test_live_view_refreshes_and_ctrl_c_exits_cleanly(bff: Busy) -> None:
    """In a real terminal (a pty): frames with rows appear, the unreachable sidecar is shown
    and retried, and SIGINT ends it with exit 0 and no traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "top",
        "--admin",
        bff.admin,
        "--admin",
        dead,
        "--interval",
        "0.3",
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"},
    )
    os.close(slave)
    try:
        screen = await asyncio.to_thread(
            _read_until, master, ["failing", "good", "0.3s window", "cannot reach"], 30
        )
        assert "1/2 sidecars" in screen
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
        rest = await asyncio.to_thread(_drain, master)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert code == 0
    assert "Traceback" not in screen + rest and "KeyboardInterrupt" not in screen + rest


async def test_grpc_calls_show_per_method_with_status_codes(
    sidecar_factory: Callable[..., Any], upstreams: Callable[[str], Any],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    app = await upstreams("app")
    async with grpc_upstream(error_rate=0.3) as models:
        config = {
            "service": {"name": "bff", "port": app.port},
            "discovery": {"static": {"models": [f"127.0.0.1:{models}"]}},
            # Every UNAVAILABLE reaches the caller (and top): no retries, no breaker trips.
            "upstreams": {"models": {
                "retries": {"attempts": 0},
                "circuit_breaker": {"consecutive_failures": 1000, "failure_ratio": 1.0},
                "outlier_detection": {"enabled": False},
            }},
        }  # fmt: skip
        sc = await sidecar_factory(config)
        outbound = f"http://127.0.0.1:{sc.bound_port('listeners.outbound')}"
        stop = asyncio.Event()
        task = asyncio.create_task(drive_grpc(outbound, "models", stop))
        try:
            ns = args("--admin", f"http://{sc.config.listeners.admin}", "--json", "--interval", "1")
            code = await asyncio.to_thread(command.main, ns)
        finally:
            stop.set()
            await task
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)["rows"]
    (grpc,) = [r for r in rows if r["kind"] == "rpc_out"]
    assert grpc["name"] == "models demo.retrieval.v1.Retrieval/Retrieve"
    assert grpc["rps"] > 0 and grpc["p99_ms"] is not None
    assert set(grpc["grpc_status"]) == {"OK", "UNAVAILABLE"}, grpc
    assert 0.4 < grpc["success_rate"] < 0.95  # ~70 % OK
    # The same calls as HTTP: 200s, so the HTTP row does not see the failures.
    http = next(r for r in rows if r["kind"] == "upstream" and r["name"] == "models")
    assert http["success_rate"] == 1.0 and http["grpc_status"] is None
