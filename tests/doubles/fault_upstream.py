"""Small, fast HTTP/1.1 upstream doubles on loopback for endpoint-health tests: a healthy server
(optionally slow), and the ways a replica fails on the wire: connection refused, reset in the
middle of the response, 503, and a blackhole that accepts and never answers.

Lighter than the aiohttp double (an asyncio.Protocol, no per-request task) so a test can push
thousands of requests through the sidecar in a few seconds. Every server counts the requests it
saw, per path, and the peers that sent them."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["ok", "503", "reset", "blackhole"]


@dataclass
class FaultServer:
    mode: Mode = "ok"
    delay: float = 0.0  # seconds before an "ok" answer
    health_path: str = "/healthz"
    healthy: bool = True  # what `health_path` answers (200 or 503), whatever the mode
    name: str = ""
    paths: Counter[str] = field(default_factory=Counter)
    peers: set[str] = field(default_factory=set)
    port: int = 0
    _server: asyncio.Server | None = None
    _transports: set[asyncio.Transport] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return sum(n for p, n in self.paths.items() if p != self.health_path)

    async def start(self) -> FaultServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._transports):
            t.abort()


class _Conn(asyncio.Protocol):
    def __init__(self, server: FaultServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]  # GETs only: no body
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.server.paths[path] += 1
            assert self.transport is not None
            peer = self.transport.get_extra_info("peername")
            if peer:
                self.server.peers.add(f"{peer[0]}:{peer[1]}")
            self.answer(path)

    def answer(self, path: str) -> None:
        s, t = self.server, self.transport
        assert t is not None
        if path == s.health_path:
            t.write(_reply(200 if s.healthy else 503, b"{}"))
        elif s.mode == "ok":
            body = b'{"upstream": "%s"}' % s.name.encode()
            if s.delay:
                asyncio.get_running_loop().call_later(s.delay, _write, t, _reply(200, body))
            else:
                t.write(_reply(200, body))
        elif s.mode == "503":
            t.write(_reply(503, b"{}"))
        elif s.mode == "reset":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-le")
            sock = t.get_extra_info("socket")
            if sock is not None:  # close with RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        # blackhole: read, never answer


def _write(t: asyncio.Transport, data: bytes) -> None:
    if not t.is_closing():
        t.write(data)


def _reply(status: int, body: bytes) -> bytes:
    reason = {200: b"OK", 503: b"Service Unavailable"}[status]
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        len(body),
        body,
    )


class RefusingPort:
    """A loopback port that refuses connections: bound (so nothing else takes it) but not
    listening, so a connect gets RST at once, like a replica whose process is gone."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()
