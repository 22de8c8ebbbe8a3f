"""gRPC vocabulary shared by the transport, the resilience layers and telemetry.

gRPC is HTTP/2 with conventions (grpc/grpc doc/PROTOCOL-HTTP2.md): `content-type:
application/grpc[+proto|+json…]`, `:path /<package.Service>/<Method>`, an optional
`grpc-timeout`, and the outcome in `grpc-status` — in trailers, or in the response headers of a
"Trailers-Only" reply (an error before any message). Imports nothing of ours but `http`."""

from __future__ import annotations

import enum
import math
from typing import Final
from urllib.parse import quote

from sidecar.http import Headers, Response
from sidecar.vocab.headers import GRPC_STATUS_HEADER, GRPC_TIMEOUT_HEADER


class GrpcStatus(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# `retries.on` names → codes (the config spells them lower-case, as Envoy's retry_on does).
RETRY_NAMES = {
    "cancelled": GrpcStatus.CANCELLED,
    "deadline_exceeded": GrpcStatus.DEADLINE_EXCEEDED,
    "internal": GrpcStatus.INTERNAL,
    "resource_exhausted": GrpcStatus.RESOURCE_EXHAUSTED,
    "unavailable": GrpcStatus.UNAVAILABLE,
}

# The HTTP status a gRPC status stands for (Envoy's Grpc::Utility::grpcToHttpStatus), so
# breaker, outlier detection and EWMA feedback classify gRPC replies by the rules they
# already apply to HTTP: UNAVAILABLE is a 503, INTERNAL a 500, INVALID_ARGUMENT the caller's.
_HTTP_EQUIVALENT = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}

# DESIGN §6: the sidecar's own error codes as gRPC statuses.
_FOR_SIDECAR_ERROR = {
    "bad_request": GrpcStatus.INTERNAL,
    "no_route": GrpcStatus.UNIMPLEMENTED,
    "upstream_timeout": GrpcStatus.DEADLINE_EXCEEDED,
    "deadline_exceeded": GrpcStatus.DEADLINE_EXCEEDED,
}

# The vocabulary's name under the one callers of this module use (grpc.TIMEOUT_HEADER).
TIMEOUT_HEADER: Final = GRPC_TIMEOUT_HEADER
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def is_grpc(headers: Headers) -> bool:
    ct = headers.get("content-type")
    return ct is not None and ct.startswith("application/grpc")


def split_path(path: str) -> tuple[str, str]:
    """(`package.Service`, `Method`) from `/package.Service/Method`; ("", "") otherwise."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def parse_timeout(value: str) -> float | None:
    """Seconds from a `grpc-timeout` value (1-8 digits and a unit); None when malformed."""
    value = value.strip()
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isdigit() and digits.isascii()):
        return None
    scale = _UNIT_SECONDS.get(unit)
    return None if scale is None else int(digits) * scale


def format_timeout(seconds: float) -> str:
    """A `grpc-timeout` value for `seconds` (rounded up, never more than 8 digits)."""
    micros = max(0, math.ceil(seconds * 1e6))
    if micros < 100_000_000:
        return f"{micros}u"
    millis = math.ceil(micros / 1000)
    if millis < 100_000_000:
        return f"{millis}m"
    return f"{min(99_999_999, math.ceil(millis / 1000))}S"


def status_of(headers: Headers) -> int | None:
    """The `grpc-status` in these headers or trailers, None when absent or malformed."""
    raw = headers.get(GRPC_STATUS_HEADER)
    if raw is None or not raw.isdigit() or len(raw) > 3:
        return None
    return int(raw)


def trailers_only_status(response: Response) -> int | None:
    """The status of a Trailers-Only reply (grpc-status in the headers, nothing else coming):
    the only gRPC failure a retry may act on, since no message has reached the caller."""
    if response.body.length != 0:
        return None
    return status_of(response.headers)


def http_equivalent(code: int) -> int:
    return _HTTP_EQUIVALENT.get(code, 500)


def status_for_error(code: str) -> GrpcStatus:
    return _FOR_SIDECAR_ERROR.get(code, GrpcStatus.UNAVAILABLE)


def encode_message(message: str) -> str:
    """`grpc-message` is percent-encoded UTF-8 (PROTOCOL-HTTP2.md)."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
