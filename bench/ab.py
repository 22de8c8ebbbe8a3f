"""Same-run A/B of sidecar trees: which of two (or more) versions costs less CPU per request.

    python -m bench.ab main HEAD                 # git refs (exported with `git archive`)
    python -m bench.ab /path/to/tree HEAD --rounds 6 --duration 4 --idle 1000
    python -m bench.ab main HEAD --compile       # refs compiled with mypyc, as `make` does
    python -m bench.ab HEAD HEAD:pure --compile  # the same tree compiled vs pure Python

One upstream nginx (core 0, shared with wrk), nginx proxy_pass as the yardstick, and one
sidecar per tree (bench config: EWMA, retries, breaker, outlier detection, metrics, tracing
1 % over OTLP/HTTP), all pinned to core 1 and loaded in interleaved rounds of wrk c=32, so
a burst of load from elsewhere hits one round of each rather than one tree. Per target: best
rps, CPU µs per request (min and median of rounds); with --idle N, RSS after the load and
with N idle keep-alive connections. The absolute figures move with the machine; the
ordering of the paired rounds is what to read."""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import idle, procs
from bench.run import UPSTREAM_NAME, _binary
from bench.wrk import Wrk


def _tree(spec: str, tmp: Path, compile_: bool) -> Path:
    """A directory holding a `sidecar/` package: `spec` itself (used as it is, compiled or
    not), or a git ref exported, and with `compile_` built with mypyc like `make native`."""
    path = Path(spec)
    if (path / "sidecar").is_dir():
        return path.resolve()
    out = tmp / spec.replace("/", "_")
    if out.exists():  # the same ref twice (e.g. `HEAD HEAD:pure`): one export, one build
        return out
    out.mkdir(parents=True)
    files = ["sidecar", "setup.py", "native-modules.txt"] if compile_ else ["sidecar"]
    archive = subprocess.run(
        ["git", "-C", str(procs.ROOT), "archive", spec, *files], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    if compile_:
        print(f"compiling {spec} with mypyc...", file=sys.stderr, flush=True)
        env = dict(os.environ, SIDECAR_MYPYC="1")
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=out,
            env=env,
            check=True,
            capture_output=True,
        )
        # Newer than the sources, so sidecar/native.py takes the build (see build-native.sh).
        for so in (out / "sidecar").rglob("*.so"):
            so.touch()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument(
        "trees",
        nargs="+",
        help="git refs or directories containing sidecar/; a `:pure` suffix runs that tree "
        "with SIDECAR_PURE_PYTHON=1",
    )
    p.add_argument("--compile", action="store_true", help="compile exported refs with mypyc")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    p.add_argument("--idle", type=int, default=0, help="idle keep-alive connections for RSS")
    a = p.parse_args(argv)
    nginx, wrk = _binary("nginx"), Wrk(_binary("wrk"), 0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    up_port, sink = procs.free_port(), procs.free_port()
    up_conf = procs.upstream_nginx_conf(tmp / "up", up_port, sink)
    upstream = procs.start_nginx(nginx, "upstream", tmp / "up", up_conf, up_port, 0)
    targets: list[tuple[str, procs.Service, str | None]] = []
    try:
        upstream.wait_listening()
        port = procs.free_port()
        conf = procs.proxy_nginx_conf(tmp / "nginx", port, up_port)
        targets.append(
            (
                "nginx proxy_pass",
                procs.start_nginx(nginx, "nginx", tmp / "nginx", conf, port, 1),
                None,
            )
        )
        for i, spec in enumerate(a.trees):
            port = procs.free_port()
            ports = {"inbound": procs.free_port(), "outbound": port, "admin": procs.free_port()}
            text = procs.sidecar_config(ports, UPSTREAM_NAME, up_port, sink, "otlp_http")
            base, pure = (spec[: -len(":pure")], True) if spec.endswith(":pure") else (spec, False)
            root = _tree(base, tmp / "trees", a.compile)
            env = {"SIDECAR_PURE_PYTHON": "1"} if pure else {}
            svc = procs.start_sidecar(tmp / f"sidecar{i}", text, port, 1, root=root, env=env)
            targets.append((f"sidecar {spec}", svc, UPSTREAM_NAME))
        for _, svc, host in targets:
            svc.wait_listening()
            wrk.run(f"http://127.0.0.1:{svc.port}/", 32, 2, host)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in targets}
        for r in range(a.rounds):
            for name, svc, host in targets:
                cpu0 = procs.cpu_seconds(svc.pid)
                res = wrk.run(f"http://127.0.0.1:{svc.port}/", 32, a.duration, host)
                us = (procs.cpu_seconds(svc.pid) - cpu0) / max(1, res.requests) * 1e6
                runs[name].append((res.rps, us))
                print(
                    f"round {r + 1} {name}: {res.rps:,.0f} rps, {us:.0f} µs CPU/request, "
                    f"errors: {res.error_text()}",
                    file=sys.stderr,
                    flush=True,
                )
        print("| target | best rps c=32 | CPU µs/request min / median |\n|---|---:|---:|")
        for name, rows in runs.items():
            cpu = [us for _, us in rows]
            print(
                f"| {name} | {max(r for r, _ in rows):,.0f} | "
                f"{min(cpu):.0f} / {statistics.median(cpu):.0f} |"
            )
        if a.idle:
            for name, svc, host in targets:
                res_idle = idle.hold_idle(
                    svc.port,
                    host or "localhost",
                    a.idle,
                    functools.partial(procs.rss_bytes, svc.pid),
                )
                print(
                    f"{name}: RSS {res_idle.rss_before / 2**20:.1f} MiB after load, "
                    f"{res_idle.rss_with_idle / 2**20:.1f} MiB with {a.idle} idle connections"
                )
    finally:
        for _, svc, _ in targets:
            svc.stop()
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
