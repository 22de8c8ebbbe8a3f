"""Raw-socket helpers and fixtures for the hardening suite."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.app import Sidecar
from tests.doubles.raw_upstream import RawUpstream

UPSTREAM = "user-service"
ERROR_KEYS = {"error", "message", "upstream", "trace_id", "request_id"}


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True  # body was framed and fully received

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Exchange:
    responses: list[RawResponse] = field(default_factory=list)
    raw: bytes = b""
    eof: bool = False  # the sidecar closed the connection


def parse_responses(data: bytes) -> list[RawResponse]:
    """Split a byte stream into responses (Content-Length or chunked framing)."""
    out: list[RawResponse] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            out.append(RawResponse(status, headers, rest[:n], len(rest) >= n))
            data = rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body, complete = b"", False
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line, 16)
                if size == 0:
                    complete, rest = True, rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            out.append(RawResponse(status, headers, body, complete))
            data = rest
        else:
            out.append(RawResponse(status, headers, rest, False))
            break
    return out


async def exchange(
    port: int, data: bytes | list[bytes], timeout: float = 5.0, until: int | None = None
) -> Exchange:
    """Send bytes, read until the sidecar closes the connection (bounded by `timeout`) or,
    with `until`, until that many complete responses arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    eof = False
    try:
        for part in [data] if isinstance(data, bytes) else data:
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    eof = True
                    break
                got += chunk
                if until is not None:
                    done = [r for r in parse_responses(got) if r.complete]
                    if len(done) >= until:
                        break
    except TimeoutError:
        pass
    except ConnectionResetError:
        eof = True
    finally:
        writer.close()
    return Exchange(parse_responses(got), got, eof)


def assert_error(resp: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("x-sidecar-error") == code, resp.headers
    body = resp.json()
    assert set(body) == ERROR_KEYS and body["error"] == code
    return body  # type: ignore[no-any-return]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until true (no sleeps as synchronisation: a deadline bounds it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[], Awaitable[RawUpstream]]]:
    started: list[RawUpstream] = []

    async def start() -> RawUpstream:
        up = await RawUpstream().start()
        started.append(up)
        return up

    yield start
    for up in started:
        await up.stop()


@pytest.fixture
async def guarded(
    raw_upstream: Callable[[], Awaitable[RawUpstream]], sidecar_factory: Callable[..., Any]
) -> Callable[..., Awaitable[tuple[RawUpstream, Sidecar, int]]]:
    """A sidecar whose only upstream (`user-service`) is a strict raw double."""

    async def make(**extra: Any) -> tuple[RawUpstream, Sidecar, int]:
        up = await raw_upstream()
        # The transport is what this suite pins: retries, the breaker and ejection would
        # legitimately turn a reset into a 200 from a second try, so they are off here.
        extra.setdefault(
            "upstreams",
            {
                "default": {
                    "retries": {"attempts": 0},
                    "circuit_breaker": {"enabled": False},
                    "outlier_detection": {"enabled": False},
                }
            },
        )
        sc = await sidecar_factory(
            {
                "service": {"name": "bff", "port": up.port},
                "discovery": {"static": {UPSTREAM: [f"127.0.0.1:{up.port}"]}},
                **extra,
            }
        )
        return up, sc, sc.bound_port("listeners.outbound")

    return make
