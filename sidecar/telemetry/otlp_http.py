"""OTLP/HTTP export of spans: protobuf bytes POSTed to a collector's /v1/traces.

The SDK's exporter builds its own encoder and HTTP client on top of protobuf, opentelemetry-proto
and urllib3: ~3.5 MiB of RSS in every sidecar, and the encoder runs in Python on the export
thread while requests wait for the GIL. Here the batch arrives already encoded (see `encode`)
and goes out over the standard library's `http.client`, with the OTLP/HTTP exporter's rules:
one keep-alive connection, retries with exponential backoff (and `Retry-After`) on 429, 502, 503,
504 and connection errors within the export timeout, gzip or deflate when asked, and the
`OTEL_EXPORTER_OTLP_*` environment variables the SDK reads for headers, compression and TLS.
It runs on the batch processor's thread only."""

from __future__ import annotations

import http.client
import logging
import math
import os
import random
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
JITTER = 0.2
# A collector's answer is a small ExportTraceServiceResponse; anything longer is not read
# (and the connection is not reused).
MAX_RESPONSE_BYTES = 64 * 1024
COMPRESSIONS = ("none", "gzip", "deflate")


@dataclass(frozen=True, slots=True)
class PostResult:
    ok: bool
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ClientSettings:
    url: str
    timeout: float
    headers: Mapping[str, str]
    compression: str = "none"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def settings_from_environment(
    url: str, timeout: float, env: Mapping[str, str] | None = None
) -> ClientSettings:
    """The exporter settings the OTel SDK takes from the environment (the `TRACES_` variable
    first, then the generic one): headers, compression, CA bundle, client certificate."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")

    compression = (get("COMPRESSION") or "none").strip().lower()
    if compression not in COMPRESSIONS:
        log.warning("unknown OTLP compression %r: sending uncompressed", compression)
        compression = "none"
    return ClientSettings(
        url=url,
        timeout=timeout,
        headers=parse_headers(get("HEADERS") or ""),
        compression=compression,
        ca_file=get("CERTIFICATE"),
        cert_file=get("CLIENT_CERTIFICATE"),
        key_file=get("CLIENT_KEY"),
    )


def parse_headers(value: str) -> dict[str, str]:
    """`key1=value1,key2=value2`, URL-encoded (the OTLP exporter specification's format);
    a malformed entry is skipped with a warning, as the SDK does."""
    headers: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, val = item.partition("=")
        name = unquote(name).strip().lower()
        if not sep or not name:
            log.warning("skipping malformed OTLP header entry %r", item)
            continue
        headers[name] = unquote(val).strip()
    return headers


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


class OtlpHttpClient:
    """POSTs serialized export requests, retrying what OTLP/HTTP says is transient."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"OTLP/HTTP endpoint must be an http:// or https:// URL: {settings.url}"
            )
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = settings.timeout
        self._compression = settings.compression
        self._headers = {
            "content-type": "application/x-protobuf",
            "user-agent": "sidecar-otlp-exporter",
            **settings.headers,
        }
        if self._compression != "none":
            self._headers.setdefault("content-encoding", self._compression)
        self._ssl = _ssl_context(settings) if self._https else None
        self._clock = clock
        self._wall = wall
        self._conn: http.client.HTTPConnection | None = None
        self._stopped = threading.Event()

    def post(self, data: bytes) -> PostResult:
        body = self._compress(data)
        deadline = self._clock() + self._timeout
        result = PostResult(False, error="not sent")
        for attempt in range(MAX_ATTEMPTS):
            if self._stopped.is_set():
                return PostResult(False, result.status, "exporter shut down")
            result, wait = self._attempt(body, deadline, _backoff(attempt))
            if result.ok or wait is None:
                return result
            remaining = deadline - self._clock()
            if attempt + 1 == MAX_ATTEMPTS or wait > remaining:
                return result
            if self._stopped.wait(wait):
                return PostResult(False, result.status, "exporter shut down")
        return result

    def shutdown(self) -> None:
        self._stopped.set()
        self._close()

    # ------------------------------------------------------------------ internals
    def _attempt(
        self, body: bytes, deadline: float, backoff: float
    ) -> tuple[PostResult, float | None]:
        """One POST (plus one immediate re-send when a kept-alive connection turned out
        closed); the result and how long to wait before trying again (None: don't)."""
        for fresh in (self._conn is None, True):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return PostResult(False, error="export timed out"), None
            try:
                status, headers = self._send(body, remaining)
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if fresh:
                    return PostResult(False, error=_describe(exc)), backoff
                continue  # a stale keep-alive connection: once more on a new one
            if 200 <= status < 400:
                return PostResult(True, status), None
            error = f"collector answered {status}"
            if status not in RETRYABLE_STATUS:
                return PostResult(False, status, error), None
            later = retry_after(headers.get("retry-after"), self._wall())
            return PostResult(False, status, error), backoff if later is None else later
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, body: bytes, timeout: float) -> tuple[int, dict[str, str]]:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request("POST", self._path, body=body, headers=self._headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        headers = {k.lower(): v for k, v in response.getheaders()}
        if not response.isclosed() or response.will_close:
            self._close()
        return response.status, headers

    def _compress(self, data: bytes) -> bytes:
        if self._compression == "gzip":
            import gzip

            return gzip.compress(data, compresslevel=6, mtime=0)
        if self._compression == "deflate":
            return zlib.compress(data)
        return data

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _backoff(attempt: int) -> float:
    return float(2**attempt) * random.uniform(1 - JITTER, 1 + JITTER)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ssl_context(settings: ClientSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file)
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


Encoder = Callable[["Sequence[ReadableSpan]"], bytes]


class OtlpHttpSpanExporter(SpanExporter):
    """The span exporter: encode the batch, POST it."""

    def __init__(self, client: OtlpHttpClient, encode: Encoder) -> None:
        self._client = client
        self._encode = encode
        self.last_error: str | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._client.post(self._encode(spans))
        if result.ok:
            return SpanExportResult.SUCCESS
        self.last_error = result.error
        log.debug("OTLP/HTTP export failed: %s", result.error)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._client.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
