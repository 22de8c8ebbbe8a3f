"""The HTTP/2 row of the benchmark: h2load (Debian nghttp2-client) through the sidecar and
through Envoy to the same h2c upstream (nginx `listen … http2`, cleartext, `return 200 "ok"`),
in the same run, the proxy on its own core, with requests/s and CPU µs per request.

h2load opens CLIENTS connections with STREAMS concurrent streams each (the multiplexed shape
of gRPC traffic); every request carries `:authority: bench-upstream`, which the sidecar routes
on as it does on Host. The sidecar forwards with `protocol: h2c`; Envoy's cluster speaks
HTTP/2 (`http2_protocol_options`)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procs

H2_TARGETS = ("direct", "envoy", "sidecar")
CLIENTS = 4
STREAMS = 8  # per connection: 32 requests in flight, as wrk's c=32 row


class H2loadError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class H2Result:
    clients: int
    streams: int
    duration_s: float
    requests: int  # completed
    succeeded: int  # 2xx
    failed: int
    errored: int
    timeout: int
    rps: float
    mean_us: float

    @property
    def errors(self) -> int:
        # h2load's "failed" already includes "errored" and non-2xx/3xx answers.
        return self.failed + self.timeout

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_TIME = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s")
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse(output: str, clients: int, streams: int) -> H2Result:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    status = _STATUS.search(output)
    mean = _TIME.search(output)
    if not (finished and requests and status):
        raise H2loadError(f"unexpected h2load output: {output[-800:]}")
    seconds = float(finished[1]) / (1000.0 if finished[2] == "ms" else 1.0)
    return H2Result(
        clients=clients,
        streams=streams,
        duration_s=seconds,
        requests=int(requests[2]),
        succeeded=int(status[1]),
        failed=int(requests[4]),
        errored=int(requests[5]),
        timeout=int(requests[6]),
        rps=float(finished[3]),
        mean_us=float(mean[1]) * _UNIT_US[mean[2]] if mean else 0.0,
    )


class H2load:
    def __init__(self, binary: str, core: int | None) -> None:
        self.binary = binary
        self.core = core

    def run(
        self,
        url: str,
        seconds: float,
        authority: str | None,
        clients: int = CLIENTS,
        streams: int = STREAMS,
    ) -> H2Result:
        argv = [self.binary, "-t", "1", "-c", str(clients), "-m", str(streams)]
        argv += ["-D", str(seconds)] if seconds >= 1 else ["-n", "200"]
        if authority:
            argv += ["-H", f":authority: {authority}"]
        proc = subprocess.run(
            [*argv, url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            preexec_fn=procs.pin_to(self.core),
            check=False,
        )
        if proc.returncode != 0:
            raise H2loadError(f"h2load exited {proc.returncode}: {proc.stderr[-800:]}")
        return parse(proc.stdout, clients, streams)


def upstream_conf(workdir: Path, port: int) -> str:
    """The h2c upstream: nginx with `listen … http2` (cleartext, prior knowledge)."""
    d = str(workdir)
    return (
        procs._NGINX_COMMON.format(dir=d)
        + "http {\n"
        + procs._NGINX_TEMP.format(dir=d)
        + f"""
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""
    )


def sidecar_config(ports: dict[str, int], upstream_name: str, upstream_port: int) -> str:
    """The HTTP/1.1 row's realistic settings, with the upstream reached over h2c."""
    text = procs.sidecar_config(ports, upstream_name, upstream_port, 0, "none")
    return text.replace("    load_balancer: ewma\n", "    load_balancer: ewma\n    protocol: h2c\n")


def envoy_config(port: int, admin_port: int, upstream_name: str, upstream_port: int) -> str:
    """The HTTP/1.1 row's Envoy config (codec AUTO: h2c with prior knowledge is accepted),
    with its cluster speaking HTTP/2 to the upstream."""
    text = procs.envoy_config(port, admin_port, upstream_name, upstream_port)
    h2_options = (
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.'
        "HttpProtocolOptions\n"
        "        explicit_http_config:\n"
        "          http2_protocol_options: {}\n"
    )
    anchor = "    lb_policy: LEAST_REQUEST\n"
    return text.replace(anchor, anchor + h2_options)


def start_envoy(
    envoy: str, workdir: Path, port: int, upstream_name: str, upstream_port: int, core: int | None
) -> procs.Service:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "envoy.yaml"
    path.write_text(envoy_config(port, procs.free_port(), upstream_name, upstream_port))
    argv = [envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart"]
    return procs.Service("envoy-h2", [*argv, "--log-level", "warn"], port, core, workdir / "out")
