"""Where the slow requests at c=1 are: sequential keep-alive requests through a sidecar with
the bench's config (upstream nginx and sidecar started as `make bench` starts them), each
latency recorded, then percentiles, the share of requests over twice the median, and how
they cluster.

    python -m bench.latprobe --ratio 0.01 --exporter otlp_http -n 20000
    chrt -f 10 python -m bench.latprobe ...   # keep the machine's other work from preempting

The client is Python, so absolute figures include its own cost; compare runs with each other."""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.run import UPSTREAM_NAME, _binary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.01, help="trace sampling ratio")
    ap.add_argument("--exporter", choices=("otlp_http", "none"), default="otlp_http")
    ap.add_argument("-n", type=int, default=20000, help="requests measured")
    ap.add_argument("--sidecar-root", type=Path, default=procs.ROOT)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="latprobe-"))
    up, sink = procs.free_port(), procs.free_port()
    conf = procs.upstream_nginx_conf(tmp / "up", up, sink)
    nginx = procs.start_nginx(_binary("nginx"), "upstream", tmp / "up", conf, up, 0)
    ports = {"inbound": procs.free_port(), "outbound": procs.free_port()}
    ports["admin"] = procs.free_port()
    config = procs.sidecar_config(ports, UPSTREAM_NAME, up, sink, a.exporter)
    config = config.replace("ratio: 0.01", f"ratio: {a.ratio}")
    sidecar = procs.start_sidecar(tmp / "sc", config, ports["outbound"], 1, root=a.sidecar_root)
    try:
        nginx.wait_listening()
        sidecar.wait_listening()
        os.sched_setaffinity(0, {0})
        res = _probe(ports["outbound"], a.n)
    finally:
        sidecar.stop()
        nginx.stop()
    lat = sorted(r[1] for r in res)

    def q(p: float) -> float:
        return lat[int(p * (len(lat) - 1))]

    print(
        f"ratio={a.ratio} exporter={a.exporter} n={a.n} p50={q(0.5):.0f} p90={q(0.9):.0f} "
        f"p99={q(0.99):.0f} p99.9={q(0.999):.0f} max={lat[-1]:.0f} us"
    )
    slow = [i for i, r in enumerate(res) if r[1] > 2 * q(0.5)]
    print(f"over 2x p50: {len(slow)} ({100 * len(slow) / a.n:.2f} %)")
    gaps = [b - a for a, b in itertools.pairwise(slow)]
    if gaps:
        print(f"requests between slow ones: median {statistics.median(gaps)}")


def _probe(port: int, n: int) -> list[tuple[float, float]]:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET / HTTP/1.1\r\nHost: {UPSTREAM_NAME}\r\n\r\n".encode()

    def one() -> None:
        s.sendall(request)
        buf = b""
        while not buf.endswith(b"ok"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("sidecar closed the connection")
            buf += chunk

    for _ in range(2000):  # warm-up
        one()
    out = []
    t00 = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        one()
        out.append((t0 - t00, (time.perf_counter() - t0) * 1e6))
    s.close()
    return out


if __name__ == "__main__":
    main()
