"""Profile a running process with py-spy (optional: `pip install py-spy`; not a dependency)
and summarise its collapsed stacks into the top self and inclusive costs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    self_top: list[tuple[str, float]]  # (frame, share of samples)
    inclusive_top: list[tuple[str, float]]


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start(
    py_spy: str, pid: int, seconds: int, out: Path, native: bool = False
) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` at 250 Hz, by function, into collapsed-stack text.
    `native` adds C frames (uvloop, httptools, the interpreter): slower to sample, but shows
    how much of a Python frame's time is really a syscall or the event loop."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--function",
            "--format",
            "raw",
            "--output",
            str(out),
            *(["--native"] if native else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _short(frame: str) -> str:
    # "name (/abs/path/pkg/module.py)" → "name (pkg/module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if where.endswith(".so") or ".so." in where or where.startswith("libc"):
        return f"{name} [{where.rsplit('/', 1)[-1]}]"
    for marker in ("/site-packages/", "/work/wt/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


def _idle(leaf: str) -> bool:
    """A thread parked in a wait (the span exporter's worker between batches): py-spy
    samples it as active, but it uses no CPU, so it would only dilute the shares."""
    return "threading.py" in leaf and leaf.startswith(("Condition.wait", "Event.wait"))


def summarise(collapsed: Path, top: int = 25) -> Profile:
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        # The first element is the thread/process label py-spy adds.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or _idle(frames[-1]):
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count
    if total == 0:
        return Profile(0, [], [])
    return Profile(
        total,
        [(f, n / total) for f, n in self_counts.most_common(top)],
        [(f, n / total) for f, n in incl_counts.most_common(top)],
    )


def render(profile: Profile) -> str:
    lines = [f"py-spy, {profile.samples} samples of the sidecar under wrk c=32 load", ""]
    lines += ["Self time (where the CPU is):", "", "| share | function |", "|---:|---|"]
    lines += [f"| {share:5.1%} | `{f}` |" for f, share in profile.self_top]
    lines += ["", "Inclusive time:", "", "| share | function |", "|---:|---|"]
    lines += [f"| {share:5.1%} | `{f}` |" for f, share in profile.inclusive_top]
    return "\n".join(lines) + "\n"
