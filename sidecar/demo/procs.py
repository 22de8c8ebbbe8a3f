"""Child processes of `sidecar demo`: each in its own process group, logs to files, stopped
with SIGTERM then SIGKILL against a deadline, so nothing outlives the demo."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. If the demo itself is SIGKILLed, the kernel
    # sends the child SIGTERM: no orphans even when our own cleanup never runs.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildExited(Exception):
    """A child stopped while the demo still needed it."""

    def __init__(self, name: str, code: int, log_path: Path) -> None:
        self.name, self.code, self.log_path = name, code, log_path
        super().__init__(f"{name} exited with code {code} (log: {log_path})")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own group: a terminal's Ctrl-C reaches only the demo, which then stops
                # every group in order; killpg also takes any grandchildren along.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except BaseException:
            log_file.close()
            raise
        child = Child(name, proc, log_path, log_file)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise ChildExited(child.name, code, child.log_path)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every group, wait up to `grace` seconds, SIGKILL what is left. Idempotent."""
        for child in self.children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            remaining = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(remaining)
        for child in self.children:
            # Also kill the group when the leader is gone: a stray grandchild may remain.
            _signal_group(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2.0)
            child.log_file.close()
        self.children.clear()


def _signal_group(child: Child, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
