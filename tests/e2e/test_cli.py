"""The CLI as a user runs it: real processes, real signals, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port

SIDECAR = [sys.executable, "-m", "sidecar.cli"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIDECAR, *args], capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "sidecar.yaml"
    p.write_text(text)
    return str(p)


def wait_port(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"port {port} never opened")


def test_check_config_names_every_problem_and_exits_2(tmp_path):
    path = write(
        tmp_path,
        "service: {name: bff}\n"
        "upstreams:\n  default:\n    timeouts: {per_try: 3 seconds}\n"
        "tracing: {exporter: none, colour: blue}\n",
    )
    r = run_cli("check-config", "-c", path)
    assert r.returncode == 2
    assert "upstreams.default.timeouts.per_try: invalid duration" in r.stderr
    assert "tracing.colour: unknown key" in r.stderr


def test_check_config_accepts_the_example():
    r = run_cli("check-config", "-c", "examples/sidecar.yaml")
    assert r.returncode == 0, r.stderr


def test_run_with_invalid_config_exits_2_before_binding(tmp_path):
    port = free_port()
    path = write(
        tmp_path, f"service: {{name: bff}}\nlisteners: {{inbound: '127.0.0.1:{port}'}}\nbogus: 1\n"
    )
    r = run_cli("run", "-c", path)
    assert r.returncode == 2
    assert "bogus: unknown key" in r.stderr
    with socket.socket() as s:  # never bound
        s.bind(("127.0.0.1", port))


def test_port_in_use_is_one_clear_line_and_exit_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(
            tmp_path,
            f"service: {{name: bff}}\nlisteners: {{inbound: '127.0.0.1:{port}', "
            f"outbound: '127.0.0.1:{free_port()}', admin: '127.0.0.1:{free_port()}'}}\n"
            "tracing: {exporter: none}\n",
        )
        r = run_cli("run", "-c", path)
    assert r.returncode == 1
    assert "listeners.inbound" in r.stderr and "in use" in r.stderr
    assert "Traceback" not in r.stderr


class _SlowApp(BaseHTTPRequestHandler):
    started = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            _SlowApp.started.set()
            _SlowApp.release.wait(20)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(tmp_path):
    app = ThreadingHTTPServer(("127.0.0.1", 0), _SlowApp)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    inbound = free_port()
    path = write(
        tmp_path,
        f"service: {{name: bff, port: {app.server_address[1]}}}\n"
        f"listeners: {{inbound: '127.0.0.1:{inbound}', outbound: '127.0.0.1:{free_port()}', "
        f"admin: '127.0.0.1:{free_port()}'}}\n"
        "tracing: {exporter: none}\nlimits: {drain_timeout: 15s}\n",
    )
    proc = subprocess.Popen([*SIDECAR, "run", "-c", path], stderr=subprocess.PIPE, text=True)
    try:
        wait_port(inbound)
        result: dict[str, object] = {}

        def call() -> None:
            with socket.create_connection(("127.0.0.1", inbound), timeout=20) as s:
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: bff\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                result["response"] = data

        t = threading.Thread(target=call)
        t.start()
        assert _SlowApp.started.wait(10)
        proc.send_signal(signal.SIGTERM)
        # the listener stops accepting while the in-flight request is still served
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", inbound), timeout=0.2).close()
                time.sleep(0.02)
            except OSError:
                break
        else:
            raise AssertionError("listener still accepting after SIGTERM")
        _SlowApp.release.set()
        t.join(20)
        assert proc.wait(20) == 0
        response = result["response"]
        assert isinstance(response, bytes) and response.startswith(b"HTTP/1.1 200")
        assert response.endswith(b'{"path": "/slow"}')
    finally:
        if proc.poll() is None:
            proc.kill()
        app.shutdown()


def test_version():
    r = run_cli("version")
    assert r.returncode == 0 and r.stdout.startswith("sidecar ")


def test_console_script_installed():
    exe = Path(sys.executable).parent / "sidecar"
    assert exe.exists(), "pip install -e . provides the `sidecar` command"
    r = subprocess.run([str(exe), "version"], capture_output=True, text=True, env=os.environ)
    assert r.returncode == 0


def test_check_config_finds_what_would_fail_at_run_time_all_at_once(tmp_path):
    """Without touching the network: a URL where host:port belongs, listeners that collide,
    an upstream `listen` port that is a listener's, a name the code does not know, and an
    endpoint file that does not exist — every one as `field.path: reason`, exit 2."""
    path = write(
        tmp_path,
        "service: {name: bff}\n"
        "listeners: {inbound: '0.0.0.0:9000', outbound: '127.0.0.1:9001', admin: '0.0.0.0:9002'}\n"
        "discovery:\n"
        "  static: {user-service: ['http://127.0.0.1:8001/v1']}\n"
        "  file: {path: endpoints.yaml}\n"
        "upstreams: {user-service: {load_balancer: fastest}}\n"
        "tracing: {exporter: none}\n",
    )
    r = run_cli("check-config", "-c", path)
    assert r.returncode == 2, r.stdout
    lines = [line.strip() for line in r.stderr.splitlines()[1:]]
    assert lines == [
        "discovery.static.user-service.0: invalid address 'http://127.0.0.1:8001/v1': an "
        "endpoint is host:port or https://host:port, without a path, query or user",
        "upstreams.user-service.load_balancer: unknown load_balancer 'fastest': expected "
        "'round_robin', 'random', 'least_request' or 'ewma'",
        f"discovery.file.path: cannot read {tmp_path / 'endpoints.yaml'}: "
        "No such file or directory",
    ]

    # the schema is fine now: the collisions and the missing file are reported together
    path = write(
        tmp_path,
        "service: {name: bff}\n"
        "listeners: {inbound: '0.0.0.0:9000', outbound: '127.0.0.1:9000', admin: '0.0.0.0:9002'}\n"
        "discovery: {file: {path: endpoints.yaml}}\n"
        "upstreams: {user-service: {listen: '127.0.0.1:9002'}}\n"
        "tracing: {exporter: none}\n",
    )
    r = run_cli("check-config", "-c", path)
    assert r.returncode == 2, r.stdout
    assert r.stderr.splitlines()[1:] == [
        "  listeners.outbound: listeners.inbound and listeners.outbound both listen on port 9000",
        "  upstreams.user-service.listen: listeners.admin and upstreams.user-service.listen "
        "both listen on port 9002",
        f"  discovery.file.path: cannot read {tmp_path / 'endpoints.yaml'}: "
        "No such file or directory",
    ]
    (tmp_path / "endpoints.yaml").write_text("user-service: ['127.0.0.1:8001']\n")
    path = write(
        tmp_path,
        "service: {name: bff}\ndiscovery: {file: {path: endpoints.yaml}}\ntracing: {exporter: none}\n",
    )
    r = run_cli("check-config", "-c", path)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.strip() == f"{path}: ok (service bff)"
