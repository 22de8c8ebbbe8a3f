"""Running `sidecar demo` as a user does, and looking at what it left behind through /proc:
its child processes, their sessions, and the TCP ports they listened on."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "sidecar.cli", "demo"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Demo:
    """`sidecar demo ARGS` in its own process group (as a shell job is), its output collected
    by a reader thread so the test can wait for a line with a deadline. With `tty=True` it
    runs on a pseudo-terminal it controls (rich draws live progress bars) and `interrupt()`
    types Ctrl-C, so the kernel's line discipline sends the SIGINT, exactly as for a user."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        tty: bool = False,
    ):
        self.workdir = workdir
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._master: int | None = None
        self.proc: subprocess.Popen[Any]
        argv = [*DEMO, *args, "--workdir", str(workdir)]
        env = {**os.environ, "COLUMNS": "160", **(env or {})}
        if tty:
            self._master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
            try:
                self.proc = subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    start_new_session=True,
                    preexec_fn=_take_terminal,
                )
            finally:
                os.close(slave)
            source: Iterable[str] = _pty_lines(self._master)
        else:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                process_group=0,
            )
            assert self.proc.stdout is not None
            source = self.proc.stdout
        self._reader = threading.Thread(target=self._read, args=(source,), daemon=True)
        self._reader.start()

    def _read(self, source: Iterable[str]) -> None:
        for line in source:
            with self._changed:
                self._lines.append(ANSI.sub("", line).replace("\r", "\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for_line(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(needle in line for line in self._lines):
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(f"demo never printed {needle!r}:\n{''.join(self._lines)}")
                self._changed.wait(left)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def interrupt(self) -> None:
        """Ctrl-C: typed on the terminal, or (on pipes) what the terminal would then do,
        SIGINT to the whole foreground process group."""
        if self._master is not None:
            os.write(self._master, b"\x03")
        else:
            os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def topology(self) -> dict[str, Any]:
        return json.loads((self.workdir / "topology.json").read_text())


def _take_terminal() -> None:
    # In the child, after setsid: the pty on stdin becomes its controlling terminal, and
    # the child's process group its foreground group (the one ^C signals).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _pty_lines(master: int) -> Iterator[str]:
    pending = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            chunk = b""
        if not chunk:
            if pending:
                yield pending.decode(errors="replace")
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace") + "\n"


def poll(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def served_requests(admin_url: str, route: str) -> float:
    """Requests a sidecar has answered on `route` (its inbound request histogram's count)."""
    try:
        with urllib.request.urlopen(f"{admin_url}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count")
        and f'http_route="{route}"' in line
    )


# ---------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str


def _stat(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parens
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0])


def processes() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (p := _stat(int(entry))) is not None:
            out.append(p)
    return out


def descendants(pid: int) -> list[Proc]:
    procs = processes()
    found: list[Proc] = []
    parents = {pid}
    while True:
        new = [p for p in procs if p.ppid in parents and p not in found]
        if not new:
            return found
        found += new
        parents = {p.pid for p in new}


def alive(pid: int) -> bool:
    p = _stat(pid)
    return p is not None and p.state != "Z"  # a zombie has exited; only its reaping is left


def live_in_sessions_or_groups(ids: Iterable[int]) -> list[Proc]:
    """Processes still running in any of these sessions / process groups, wherever they were
    reparented to: a grandchild that escaped its parent's stop is found here."""
    wanted = set(ids)
    return [p for p in processes() if (p.sid in wanted or p.pgid in wanted) and p.state != "Z"]


def listening_ports(pids: Iterable[int]) -> set[int]:
    """TCP ports these processes hold in LISTEN state (their socket inodes in /proc/net/tcp)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # REUSEADDR: TIME_WAIT of finished connections is not "bound"; a listener still is.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def kill_leftovers(procs: Iterable[Proc]) -> None:
    """After a failed check: SIGKILL the groups of what the demo left behind, so one failing
    test does not leave processes (and ports) to the next."""
    for group in {p.pgid for p in procs}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
