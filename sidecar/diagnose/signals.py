"""What a span says about its outcome, read from the tag conventions in use: OpenTelemetry
semantic conventions (`error.type`, `http.response.status_code`, `http.request.resend_count`),
older OpenTracing ones (`error`, `http.status_code`) and our sidecar's own (`sidecar.attempt`,
`x-sidecar-error`, `x-sidecar-expected-timeout-ms`). Defined once, shared by every finding."""

from __future__ import annotations

from sidecar.diagnose.model import Span

_TIMEOUT_TYPES = frozenset(
    {"timeout", "upstream_timeout", "deadline_exceeded", "asyncio.timeouterror", "timeouterror"}
)
_BREAKER_TYPES = frozenset({"circuit_open", "circuitopen", "circuit_breaker_open"})


def status_code(span: Span) -> int | None:
    for key in ("http.response.status_code", "http.status_code"):
        value = span.tags.get(key)
        if value is not None and not isinstance(value, bool):
            try:
                return int(value)
            except ValueError:
                continue
    return None


def error_type(span: Span) -> str:
    """`error.type`, else the sidecar's `x-sidecar-error` code (under whatever key prefix the
    header was recorded with), lower-cased; "" when neither is present."""
    value = span.tags.get("error.type")
    if value:
        return str(value).lower()
    for key, value in span.tags.items():
        if key.lower().replace("_", "-").endswith("x-sidecar-error") and value:
            return str(value).strip("[]'\" ").lower()
    return ""


def is_error(span: Span) -> bool:
    if span.tags.get("error") in (True, "true", "True"):
        return True
    if str(span.tags.get("otel.status_code", "")).upper() == "ERROR":
        return True
    code = status_code(span)
    if code is not None and code >= 500:
        return True
    kind = error_type(span)  # OTel puts the status here for 4xx too; those are not failures
    return bool(kind) and not (kind.isdigit() and int(kind) < 500)


def is_timeout(span: Span) -> bool:
    return status_code(span) == 504 or error_type(span) in _TIMEOUT_TYPES


def is_breaker_rejection(span: Span) -> bool:
    return error_type(span) in _BREAKER_TYPES


def attempt(span: Span) -> int:
    """1 for a first try; retries count up (`sidecar.attempt`, or OTel's resend count + 1)."""
    for key, offset in (("sidecar.attempt", 0), ("http.request.resend_count", 1)):
        value = span.tags.get(key)
        if value is not None and not isinstance(value, bool):
            try:
                return max(1, int(value) + offset)
            except ValueError:
                continue
    return 1


def deadline_ms(span: Span) -> float | None:
    """The remaining deadline the caller gave this request, if recorded."""
    for key, value in span.tags.items():
        k = key.lower().replace("_", "-")
        if k.endswith("expected-timeout-ms") or k in ("sidecar.deadline-ms", "sidecar.deadline"):
            try:
                return float(str(value).strip("[]'\" "))
            except ValueError:
                continue
    return None


def timeout_ms(span: Span) -> float | None:
    """The timeout this hop's caller configured for it (per try), if recorded."""
    for key in ("sidecar.timeout_ms", "sidecar.per_try_timeout_ms", "sidecar.timeout.per_try_ms"):
        value = span.tags.get(key)
        if value is not None and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
    return None
