"""Drive wrk and read its results exactly.

A `done()` hook in Lua prints one JSON line with wrk's own counters and exact percentiles from
its latency histogram (microseconds), so nothing is parsed from the human-readable summary.
Only `done` is defined: a `request`/`response` hook would push every request through Lua and
make wrk itself the bottleneck."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import pin_to

_MARK = "BENCH_JSON "
_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.3f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    connections: int
    requests: int
    duration_us: int
    bytes: int
    connect: int
    read: int
    write: int
    status: int  # responses with status > 399, as wrk counts them
    timeout: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        return self.connect + self.read + self.write + self.status + self.timeout

    def error_text(self) -> str:
        parts = [
            f"{name} {n}"
            for name, n in (
                ("connect", self.connect),
                ("read", self.read),
                ("write", self.write),
                ("non-2xx/3xx", self.status),
                ("timeout", self.timeout),
            )
            if n
        ]
        return ", ".join(parts) or "none"

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "rps": round(self.rps, 1)}


class WrkError(Exception):
    pass


def parse_output(stdout: str, connections: int) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK) :])
            return WrkResult(connections=connections, **data)
    raise WrkError(f"wrk printed no result line; output was:\n{stdout}")


class Wrk:
    def __init__(self, binary: str, core: int | None) -> None:
        self._binary = binary
        self._core = core
        self._dir = tempfile.TemporaryDirectory(prefix="bench-wrk-")
        self._script = Path(self._dir.name) / "done.lua"
        self._script.write_text(_DONE_LUA)

    def command(
        self, url: str, connections: int, duration: int, host: str | None = None
    ) -> list[str]:
        cmd = [
            self._binary,
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "-s",
            str(self._script),
        ]
        if host:
            cmd += ["-H", f"Host: {host}"]
        return [*cmd, url]

    def run(self, url: str, connections: int, duration: int, host: str | None = None) -> WrkResult:
        cmd = self.command(url, connections, duration, host)
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
            preexec_fn=pin_to(self._core),
        )
        if proc.returncode != 0:
            raise WrkError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return parse_output(proc.stdout, connections)

    def close(self) -> None:
        self._dir.cleanup()
