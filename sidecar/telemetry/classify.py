"""`error.type` of an exchange, for span attributes and the `error_type` metric label.

Local stand-in: the shared failure classification (sidecar/resilience/classify.py) is being
written in parallel; once it lands, this should delegate to it so metrics, retries and the
breaker agree on what a failure is. Values are a closed set, so they are safe labels."""

from __future__ import annotations

import asyncio

from sidecar.errors import SidecarError


def error_type_of_status(status: int) -> str:
    """5xx is a failure (its code as text, as OTel semconv says); 4xx is the caller's."""
    return str(status) if 500 <= status <= 599 else ""


def error_type_of_exception(exc: BaseException) -> str:
    if isinstance(exc, SidecarError):
        return exc.code
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "upstream_timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ConnectionError):
        return "upstream_reset"
    return "internal"
