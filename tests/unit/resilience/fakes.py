"""Test doubles for the resilience layers: a fake clock, a recording observer, and a scripted
terminal handler standing in for the upstream (returns canned responses / raises our errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.http import EMPTY_BODY, Body, BytesBody, Headers, Request, Response


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingObserver:
    events: list[tuple[str, ...]] = field(default_factory=list)

    def retry(self, upstream: str, reason: str) -> None:
        self.events.append(("retry", upstream, reason))

    def retry_budget_exhausted(self, upstream: str) -> None:
        self.events.append(("retry_budget_exhausted", upstream))

    def breaker_state(self, upstream: str, state: str) -> None:
        self.events.append(("breaker_state", upstream, state))

    def rejected(self, upstream: str, reason: str) -> None:
        self.events.append(("rejected", upstream, reason))

    def fallback(self, upstream: str, kind: str, reason: str) -> None:
        self.events.append(("fallback", upstream, kind, reason))

    def endpoints(self, upstream: str, healthy: int, ejected: int) -> None:
        self.events.append(("endpoints", upstream, str(healthy), str(ejected)))

    def discovery_update(self, upstream: str, source: str, timestamp: float) -> None:
        pass

    def discovery_error(self, source: str) -> None:
        pass

    def of(self, kind: str) -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == kind]


def make_request(
    method: str = "GET",
    target: str = "/items/1",
    headers: list[tuple[str, str]] | None = None,
    body: Body = EMPTY_BODY,
    upstream: str = "svc",
) -> Request:
    return Request(
        method=method, target=target, headers=Headers(headers or []), body=body, upstream=upstream
    )


def response(
    status: int = 200, body: bytes = b"ok", headers: list[tuple[str, str]] | None = None
) -> Response:
    hs = Headers(headers or [("content-length", str(len(body)))])
    return Response(status=status, headers=hs, body=BytesBody(body))


Step = Response | BaseException | Callable[[Request], Response]


class ScriptedUpstream:
    """Terminal handler: plays `steps` in order (the last repeats). Records every call with the
    headers it saw and what the body contained."""

    def __init__(self, *steps: Step, clock: FakeClock | None = None, latency: float = 0.0):
        self.steps = list(steps)
        self.calls: list[Request] = []
        self.seen_headers: list[dict[str, str]] = []
        self.seen_bodies: list[bytes] = []
        self.clock = clock
        self.latency = latency
        self.hang = asyncio.Event()

    async def __call__(self, request: Request) -> Response:
        self.calls.append(request)
        self.seen_headers.append(dict(request.headers.items()))
        self.seen_bodies.append(b"".join([c async for c in request.body]))
        if self.clock is not None:
            self.clock.advance(self.latency)
        step = self.steps[min(len(self.calls) - 1, len(self.steps) - 1)]
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Response):
            return step
        return step(request)


class StreamingBody:
    """A non-replayable body delivered in chunks (like the transport's StreamBody)."""

    def __init__(self, chunks: list[bytes], length: int | None = None) -> None:
        self.chunks = chunks
        self.length = length
        self.replayable = False
        self.consumed = False
        self.aborted = False

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        chunks, self.chunks = self.chunks, []  # one-shot, like a socket
        for c in chunks:
            yield c
        self.consumed = True

    def abort(self) -> None:
        self.aborted = True


async def hang_forever(request: Request) -> Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
