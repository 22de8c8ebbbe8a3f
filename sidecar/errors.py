"""Errors the sidecar produces itself (the error codes in README.md), as typed exceptions.

Layers raise these; `error_response` is the one place that turns them into the reply:
status, `x-sidecar-error` header and the JSON body."""

from __future__ import annotations

import json
import math

from sidecar.grpc import encode_message, status_for_error
from sidecar.http import BytesBody, Headers, Response
from sidecar.vocab.headers import (
    ERROR_HEADER,
    GRPC_MESSAGE_HEADER,
    GRPC_STATUS_HEADER,
    REQUEST_ID_HEADER,
)


class SidecarError(Exception):
    code = "internal"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        upstream: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class BadRequest(SidecarError):
    code = "bad_request"
    status = 400


class NoRoute(SidecarError):
    code = "no_route"
    status = 404


class PayloadTooLarge(SidecarError):
    # No code of its own for 413: `bad_request` with status 413 keeps the set of codes closed.
    code = "bad_request"
    status = 413


class NoHealthyEndpoints(SidecarError):
    code = "no_healthy_endpoints"
    status = 503


class CircuitOpen(SidecarError):
    code = "circuit_open"
    status = 503


class Overloaded(SidecarError):
    code = "overloaded"
    status = 503


class UpstreamConnectFailure(SidecarError):
    code = "upstream_connect_failure"
    status = 502


class UpstreamReset(SidecarError):
    code = "upstream_reset"
    status = 502


class UpstreamTimeout(SidecarError):
    code = "upstream_timeout"
    status = 504


class DeadlineExceeded(SidecarError):
    code = "deadline_exceeded"
    status = 504


def error_response(
    err: SidecarError, *, trace_id: str = "", request_id: str = "", grpc: bool = False
) -> Response:
    if grpc:
        return grpc_error_response(err, request_id=request_id)
    body = json.dumps(
        {
            "error": err.code,
            "message": err.message,
            "upstream": err.upstream,
            "trace_id": trace_id,
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()
    headers = Headers.from_lower(
        [
            ("content-type", "application/json"),
            (ERROR_HEADER, err.code),
        ]
    )
    if request_id:
        headers.add(REQUEST_ID_HEADER, request_id)
    if err.retry_after is not None:
        headers.add("retry-after", str(max(1, math.ceil(err.retry_after))))
    return Response(status=err.status, headers=headers, body=BytesBody(body), error_code=err.code)


def grpc_error_response(err: SidecarError, *, request_id: str = "") -> Response:
    """DESIGN §6 on a gRPC request: HTTP 200, Trailers-Only with `grpc-status` and
    `grpc-message`, so a gRPC client sees a status rather than a protocol error."""
    headers = Headers.from_lower(
        [
            ("content-type", "application/grpc"),
            (GRPC_STATUS_HEADER, str(int(status_for_error(err.code)))),
            (GRPC_MESSAGE_HEADER, encode_message(err.message)),
            (ERROR_HEADER, err.code),
        ]
    )
    if request_id:
        headers.add(REQUEST_ID_HEADER, request_id)
    if err.retry_after is not None:
        headers.add("retry-after", str(max(1, math.ceil(err.retry_after))))
    return Response(status=200, headers=headers, body=BytesBody(b""), error_code=err.code)
