"""What counts as a failure: defined once, shared by retries, the breaker, outlier detection,
the balancer's feedback and telemetry (linkerd2-proxy's `http/classify`).

An exchange ends either with response headers (classified by status) or with an exception
(classified by type). 4xx is the caller's problem and counts as success for upstream health."""

from __future__ import annotations

import asyncio
import enum

from sidecar.errors import (
    DeadlineExceeded,
    SidecarError,
    UpstreamConnectFailure,
    UpstreamReset,
    UpstreamTimeout,
)
from sidecar.grpc import http_equivalent as grpc_http_equivalent
from sidecar.grpc import status_of as grpc_status_of
from sidecar.http import Response


class Outcome(enum.Enum):
    SUCCESS = "success"
    CONNECT_FAILURE = "connect_failure"  # nothing was sent: always safe to retry
    RESET = "reset"  # connection lost or malformed reply before headers completed
    TIMEOUT = "timeout"  # per-try / total timeout, or the caller's deadline ran out mid-try
    STATUS_5XX = "5xx"
    LOCAL = "local"  # the sidecar refused itself (breaker open, overloaded, no endpoint...)
    CANCELLED = "cancelled"  # the caller went away; says nothing about the upstream
    INTERNAL = "internal"  # an unexpected exception: our bug, not the upstream's health

    @property
    def is_failure(self) -> bool:
        """Counts against upstream health (breaker, outlier detection)."""
        return self in _FAILURES


_FAILURES = frozenset({Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT, Outcome.STATUS_5XX})


def classify_response(status: int) -> Outcome:
    return Outcome.STATUS_5XX if 500 <= status <= 599 else Outcome.SUCCESS


def classify_reply(response: Response) -> Outcome:
    """`classify_response`, except that a gRPC Trailers-Only failure (HTTP 200 with no body
    and a `grpc-status` in the headers) counts as the HTTP status it stands for: UNAVAILABLE
    as a 503, INTERNAL as a 500, a caller's error (INVALID_ARGUMENT...) as a 4xx."""
    status = response.status
    if status == 200 and response.body.length == 0:
        code = grpc_status_of(response.headers)
        if code is not None:
            status = grpc_http_equivalent(code)
    return classify_response(status)


def classify_error(exc: BaseException) -> Outcome:
    # Order matters only for subclasses; ours are flat.
    if isinstance(exc, UpstreamConnectFailure):
        return Outcome.CONNECT_FAILURE
    if isinstance(exc, UpstreamReset):
        return Outcome.RESET
    if isinstance(exc, UpstreamTimeout | DeadlineExceeded):
        return Outcome.TIMEOUT
    if isinstance(exc, SidecarError):
        return Outcome.LOCAL
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.CANCELLED
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, ConnectionError):
        return Outcome.RESET
    return Outcome.INTERNAL


def error_type_of_status(status: int) -> str:
    """OTel `error.type` for a response: the 5xx status as text, "" otherwise (4xx is the
    caller's error, not ours)."""
    return str(status) if 500 <= status <= 599 else ""


def error_type_of_exception(exc: BaseException) -> str:
    """OTel `error.type` for a failed exchange: a sidecar error code or a small closed set, so it
    is safe as a metric label."""
    if isinstance(exc, SidecarError):
        return exc.code
    outcome = classify_error(exc)
    if outcome is Outcome.TIMEOUT:
        return "upstream_timeout"
    if outcome is Outcome.RESET:
        return "upstream_reset"
    if outcome is Outcome.CANCELLED:
        return "cancelled"
    return "internal"
