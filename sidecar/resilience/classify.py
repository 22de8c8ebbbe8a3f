"""What counts as a failure, defined once (linkerd2-proxy's `http/classify`).

Retries, the circuit breaker, outlier detection and telemetry all ask this module, so a 503
that trips the breaker is the same 503 that is retried and counted."""

from __future__ import annotations

import asyncio
from enum import Enum

from sidecar.errors import (
    SidecarError,
    UpstreamConnectFailure,
    UpstreamReset,
    UpstreamTimeout,
)


class Outcome(Enum):
    SUCCESS = "success"
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    STATUS_5XX = "5xx"
    LOCAL = "local"  # the sidecar refused before reaching the upstream (not the upstream's fault)

    @property
    def is_failure(self) -> bool:
        return self not in (Outcome.SUCCESS, Outcome.LOCAL)


def classify_status(status: int) -> Outcome:
    return Outcome.STATUS_5XX if status >= 500 else Outcome.SUCCESS


def classify_error(exc: BaseException) -> Outcome:
    if isinstance(exc, UpstreamConnectFailure):
        return Outcome.CONNECT_FAILURE
    if isinstance(exc, UpstreamReset):
        return Outcome.RESET
    if isinstance(exc, UpstreamTimeout | TimeoutError | asyncio.TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, SidecarError):
        return Outcome.LOCAL
    return Outcome.RESET
