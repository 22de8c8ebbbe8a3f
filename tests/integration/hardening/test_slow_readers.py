"""Slow readers (slowhttptest -X): many clients ask for a large download and read nothing.

Against a `sidecar run` process (uvloop, as in production), so its RSS is the sidecar's alone:
memory stays within the documented bound per connection, and every such client is cut off once
it has read nothing for `timeouts.idle`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port
from tests.doubles.upstream import Upstream

SIDECAR = [sys.executable, "-m", "sidecar.cli"]
CONNECTIONS = 1000
PER_CONNECTION_KIB = 100  # the figure docs/guarantees.md promises for a stalled stream
IDLE = 1.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = await reader.read()
    writer.close()
    return got


def _slow_reader(port: int, request: bytes) -> socket.socket:
    sock = socket.socket()
    # A tiny receive window, as slowhttptest -X sets: the kernel holds little for us.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # An internet-sized segment: over loopback's 64 KiB MSS the sidecar's kernel would size
    # its send buffer (not our concern: kernel memory, not RSS) in megabytes per connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the sidecar closed it (FIN or reset), seen without reading: reading would make
    this a reader."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state != 1  # TCP_ESTABLISHED


async def test_slow_readers_have_bounded_memory_and_are_cut_at_the_idle_timeout(tmp_path):
    up = await Upstream("user").start()
    outbound = free_port()
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        "service: {name: bff}\n"
        f"listeners: {{inbound: '127.0.0.1:{free_port()}', outbound: '127.0.0.1:{outbound}', "
        f"admin: '127.0.0.1:{free_port()}'}}\n"
        f"discovery: {{static: {{user-service: ['127.0.0.1:{up.port}']}}}}\n"
        "tracing: {exporter: none}\nlogging: {level: warning}\n"
        f"upstreams: {{default: {{timeouts: {{idle: {IDLE}s, per_try: 30s, total: 60s}}}}}}\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; we need its pid for /proc
        [*SIDECAR, "run", "-c", str(cfg)], stderr=subprocess.PIPE
    )
    socks: list[socket.socket] = []
    try:
        end = time.monotonic() + 15
        while True:
            try:
                warm = await _request(
                    outbound,
                    b"GET /download/65536 HTTP/1.1\r\nHost: user-service\r\nConnection: close\r\n\r\n",
                )
                break
            except OSError:
                assert time.monotonic() < end, "sidecar never listened"
                await asyncio.sleep(0.05)
        assert warm.startswith(b"HTTP/1.1 200")
        base_rss, base_fds = _rss_kib(proc.pid), _fds(proc.pid)
        request = b"GET /download/%d HTTP/1.1\r\nHost: user-service\r\n\r\n" % (64 << 20)
        started = time.monotonic()
        for _ in range(CONNECTIONS):
            socks.append(_slow_reader(outbound, request))
        peak = base_rss
        loop_end = started + 30
        open_socks = list(socks)
        while open_socks:
            peak = max(peak, _rss_kib(proc.pid))
            open_socks = [s for s in open_socks if not _closed(s)]
            assert time.monotonic() < loop_end, f"{len(open_socks)} slow readers still open"
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        grown = peak - base_rss
        print(
            f"SLOWREAD {CONNECTIONS} connections: RSS {base_rss} -> peak {peak} KiB "
            f"(+{grown / 1024:.1f} MiB, {grown / CONNECTIONS:.1f} KiB each), all closed in "
            f"{took:.1f} s"
        )
        assert grown <= CONNECTIONS * PER_CONNECTION_KIB, f"+{grown} KiB"
        # closed by the write-side idle timeout, not by anything slower
        assert took < IDLE + 10
        end = time.monotonic() + 10
        while _fds(proc.pid) > base_fds + 10:
            assert time.monotonic() < end, (_fds(proc.pid), base_fds)
            await asyncio.sleep(0.05)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        await up.stop()
