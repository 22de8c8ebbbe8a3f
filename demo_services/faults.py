"""Fault knobs every demo service carries: fixed + jittered latency, error rate, hang, slow start.

Set at start from the environment (FAULT_LATENCY_MS, FAULT_JITTER_MS, FAULT_ERROR_RATE,
FAULT_HANG, FAULT_SLOW_START_S) and changed at runtime with `POST /faults`. Randomness comes
from an injected `random.Random` and time from an injected monotonic clock, so tests can pin
both."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web

from demo_services.grpc_wire import Code, GrpcError, Interceptor

Monotonic = Callable[[], float]

# Paths the faults never touch: the knobs themselves must stay reachable while the service
# misbehaves. /healthz has its own rule (503 during slow start).
CONTROL_PATHS = frozenset({"/healthz", "/faults", "/mode"})


class FaultSpecError(ValueError):
    """An invalid fault setting; the message names the field."""


@dataclass(frozen=True)
class FaultSpec:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    hang: bool = False
    slow_start_s: float = 0.0

    def updated(self, changes: Mapping[str, Any]) -> FaultSpec:
        """A copy with `changes` applied (the JSON body of POST /faults); validates."""
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise FaultSpecError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, raw in changes.items():
            if key == "hang":
                if not isinstance(raw, bool):
                    raise FaultSpecError("hang: expected true or false")
                values[key] = raw
                continue
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise FaultSpecError(f"{key}: expected a number")
            if raw < 0:
                raise FaultSpecError(f"{key}: must not be negative")
            if key == "error_rate" and raw > 1:
                raise FaultSpecError("error_rate: must be between 0 and 1")
            values[key] = float(raw)
        return replace(self, **values)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultSpec:
        changes: dict[str, Any] = {}
        for key in ("latency_ms", "jitter_ms", "error_rate", "slow_start_s"):
            text = env.get(f"FAULT_{key.upper()}", "").strip()
            if text:
                try:
                    changes[key] = float(text)
                except ValueError:
                    raise FaultSpecError(f"FAULT_{key.upper()}: expected a number") from None
        hang = env.get("FAULT_HANG", "").strip().lower()
        if hang:
            changes["hang"] = hang in ("1", "true", "yes", "on")
        return cls().updated(changes)


class Faults:
    """The live fault state of one service process."""

    def __init__(
        self,
        spec: FaultSpec | None = None,
        rng: random.Random | None = None,
        clock: Monotonic = time.monotonic,
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._spec = FaultSpec()
        self._started = clock()
        self._unhang = asyncio.Event()
        self.apply(spec or FaultSpec(), restart_slow_start=True)

    @property
    def spec(self) -> FaultSpec:
        return self._spec

    def apply(self, spec: FaultSpec, restart_slow_start: bool = False) -> None:
        # Setting slow_start_s restarts the warm-up window, as a restarted instance would.
        if restart_slow_start:
            self._started = self._clock()
        self._spec = spec
        if spec.hang:
            self._unhang.clear()
        else:
            self._unhang.set()  # releases requests hanging under the old setting

    def starting(self) -> bool:
        return self._clock() - self._started < self._spec.slow_start_s

    def delay_s(self) -> float:
        s = self._spec
        jitter = self._rng.uniform(0.0, s.jitter_ms) if s.jitter_ms else 0.0
        return (s.latency_ms + jitter) / 1000.0

    def should_fail(self) -> bool:
        rate = self._spec.error_rate
        return rate > 0 and self._rng.random() < rate

    async def hang_while_set(self) -> None:
        if self._spec.hang:
            await self._unhang.wait()

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self._spec), "starting": self.starting()}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def fault_middleware(faults: Faults) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def inject(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in CONTROL_PATHS:
            return await handler(request)
        if faults.starting():
            return _error(503, "starting", "service is warming up (slow start fault)")
        await faults.hang_while_set()
        delay = faults.delay_s()
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.should_fail():
            return _error(500, "injected_fault", "error injected by FAULT_ERROR_RATE")
        try:
            return await handler(request)
        except ConnectionResetError:
            # The caller (our sidecar) went away mid-request, e.g. while the demo stops:
            # nobody is left to answer, and it is not a service error worth a traceback.
            # aiohttp drops a response it cannot write without logging (nginx's 499).
            return web.Response(status=499, text="client closed the connection")

    return inject


def fault_routes(faults: Faults) -> list[web.RouteDef]:
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(faults.as_json())

    async def post_faults(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_request", "body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "bad_request", "body must be a JSON object")
        try:
            faults.apply(faults.spec.updated(body), restart_slow_start="slow_start_s" in body)
        except FaultSpecError as exc:
            return _error(400, "bad_request", str(exc))
        return web.json_response(faults.as_json())

    async def healthz(request: web.Request) -> web.Response:
        if faults.starting():
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    return [
        web.get("/faults", get_faults),
        web.post("/faults", post_faults),
        web.get("/healthz", healthz),
    ]


def grpc_interceptor(faults: Faults) -> Interceptor:
    """The same knobs on gRPC calls; a failure is UNAVAILABLE, what a gRPC server that cannot
    serve answers (and what callers and the sidecar retry)."""

    async def intercept(path: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if faults.starting():
            raise GrpcError(Code.UNAVAILABLE, "service is warming up (slow start fault)")
        await faults.hang_while_set()
        delay = faults.delay_s()
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.should_fail():
            raise GrpcError(Code.UNAVAILABLE, "error injected by FAULT_ERROR_RATE")
        return await call()

    return intercept


def health(faults: Faults) -> tuple[int, dict[str, str]]:
    """/healthz as (status, body), for servers that are not the aiohttp app."""
    return (503, {"status": "starting"}) if faults.starting() else (200, {"status": "ok"})
