"""Hypothesis feeds hostile bytes to a live sidecar socket. After every example the sidecar
still serves a normal request, and the strict upstream double never saw a request that isn't
well-formed (so nothing we parse leniently is ever re-emitted as something else)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from sidecar.config import build_config
from sidecar.transport.detect import is_h2_preface
from tests.conftest import free_port
from tests.doubles.raw_upstream import RawUpstream

HOST = b"Host: user-service\r\n"


class LiveSidecar:
    """A sidecar and a strict upstream on a loop in a background thread, so hypothesis
    (synchronous) can drive them with plain blocking sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.up, self.sc = self.run(self._start())
        self.port = self.sc.bound_port("listeners.outbound")

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> tuple[RawUpstream, Sidecar]:
        up = await RawUpstream().start()
        config = build_config(
            {
                "service": {"name": "bff", "port": up.port},
                "listeners": {
                    k: f"127.0.0.1:{free_port()}" for k in ("inbound", "outbound", "admin")
                },
                "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
                "tracing": {"exporter": "none"},
                "limits": {"header_read_timeout": "1s", "max_body_bytes": "64KiB"},
            },
            env={},
        )
        sc = Sidecar(config)
        await sc.start()
        return up, sc

    async def _stop(self) -> None:
        await self.sc.drain(timeout=1)
        await self.sc.stop()
        await self.up.stop()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveSidecar]:
    sc = LiveSidecar()
    yield sc
    sc.close()


def send(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send, read what comes until EOF or `timeout`, then close. (No half-close: like nginx
    and Envoy, the sidecar takes a client's FIN as "gone" and aborts its request.)"""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                out += chunk
        except OSError:  # timeout, or reset by the sidecar: we only care that it survives
            pass
    return out


FRAGMENTS = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p HTTP/1.1\r\n",
    b"GET http://user-service/abs HTTP/1.1\r\n",
    b"HTTP/1.0",
    HOST,
    b"Host: localhost\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Connection: keep-alive, x-a\r\n",
    b"Expect: 100-continue\r\n",
    b"X-A: b\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"hello",
    b";ext=1",
]
TEMPLATE = b"POST /t HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nX-A: b\r\n\r\nhello"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(TEMPLATE)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b"\r\n\x00 \t:;,\x7f\xff0aA"))
        if op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if op == "delete":
                del data[pos]
            else:
                data[pos] = byte
    return bytes(data)


HOSTILE = st.one_of(
    st.binary(max_size=512),
    st.lists(st.sampled_from(FRAGMENTS), max_size=14).map(b"".join),
    mutated(),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(HOSTILE)
def test_random_bytes_never_break_the_sidecar_or_reach_upstream_malformed(live, data):
    reply = send(live.port, data, timeout=0.25)
    if reply and is_h2_preface(data):
        # The start of the HTTP/2 preface: HTTP/2 answers, its SETTINGS frame first.
        assert len(reply) >= 9 and reply[3] == 0x04, reply[:80]
    elif reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:80]
        assert reply[9:12] != b"500", reply[:300]  # never an internal error
    ok = send(live.port, b"GET /probe HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
    assert live.up.violations == []
    assert all(s.header("host") == "user-service" for s in live.up.seen)
