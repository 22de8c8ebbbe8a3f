"""The demo services as a user runs them: `python -m demo_services.<name> --port N`, env knobs,
real processes and sockets; the bff calling the three services directly (no sidecar)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import free_port


def http(method: str, url: str, body: object | None = None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, f"service on {port} exited with {proc.returncode}"
        try:
            if http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"service on {port} never became healthy")


@contextmanager
def service(name: str, env: dict[str, str] | None = None) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"demo_services.{name}", "--port", str(port), "--seed", "1"],
        env={**os.environ, **(env or {})},
    )
    try:
        wait_healthy(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(10) == 0, "SIGTERM is a clean exit"
        finally:
            if proc.poll() is None:
                proc.kill()


def test_env_knobs_apply_at_start_and_post_faults_changes_them():
    with service("document_service", {"FAULT_LATENCY_MS": "250"}) as port:
        t0 = time.monotonic()
        status, body, _ = http("GET", f"http://127.0.0.1:{port}/documents?user=3")
        assert status == 200 and len(body["documents"]) == 3
        assert time.monotonic() - t0 >= 0.24
        assert http("GET", f"http://127.0.0.1:{port}/faults")[1]["latency_ms"] == 250
        http("POST", f"http://127.0.0.1:{port}/faults", {"latency_ms": 0, "error_rate": 1})
        status, body, _ = http("GET", f"http://127.0.0.1:{port}/documents/3-1")
        assert status == 500 and body["error"] == "injected_fault"


def test_slow_start_keeps_healthz_503_then_recovers():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_services.user_service", "--port", str(port)],
        env={**os.environ, "FAULT_SLOW_START_S": "1.5"},
    )
    try:
        end = time.monotonic() + 10
        first = None
        while first is None and time.monotonic() < end:
            try:
                first = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0]
            except OSError:
                time.sleep(0.05)
        assert first == 503
        wait_healthy(port, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_env_knob_exits_2_with_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "demo_services.user_service", "--port", str(free_port())],
        env={**os.environ, "FAULT_ERROR_RATE": "often"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert "FAULT_ERROR_RATE" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
def test_bff_over_real_services(mode):
    with (
        service("user_service", {"FAULT_LATENCY_MS": "100"}) as users,
        service("document_service", {"FAULT_LATENCY_MS": "300"}) as docs,
        service("retrieval_service", {"FAULT_LATENCY_MS": "150"}) as retrieval,
        service(
            "bff",
            {
                "BFF_MODE": mode,
                "UPSTREAM_USER_SERVICE": f"http://127.0.0.1:{users}",
                "UPSTREAM_DOCUMENT_SERVICE": f"http://127.0.0.1:{docs}",
                "UPSTREAM_RETRIEVAL_SERVICE": f"http://127.0.0.1:{retrieval}",
            },
        ) as bff,
    ):
        http("GET", f"http://127.0.0.1:{bff}/context/1")  # warm the connection pool
        t0 = time.monotonic()
        status, body, headers = http("GET", f"http://127.0.0.1:{bff}/context/42?q=invoices")
        elapsed = time.monotonic() - t0
        assert status == 200 and body["mode"] == mode and body["degraded"] == []
        assert body["user"]["id"] == "42" and len(body["passages"]) == 3
        assert "document-service;dur=" in headers["server-timing"]
        if mode == "sequential":
            assert elapsed >= 0.54
        else:
            assert 0.29 <= elapsed < 0.5
