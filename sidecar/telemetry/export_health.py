"""Reports a trace-export outage as two log lines, one when it begins and one when it ends
(with the spans dropped in between), instead of the OTLP exporters' line per failed batch.

The SDK's exporters log every retry ("Transient error ... encountered while exporting traces")
and every failed batch ("Failed to export traces"): with no collector that is a line every few
seconds, forever. A filter takes those records off the log and keeps the latest one as the
reason the batch failed; `ExportMonitor` logs the transitions. The drops themselves are counted
in sidecar_spans_dropped_total as before."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Loggers of the OTLP exporters that log per batch (gRPC; HTTP, old and new client layout).
SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


class ExportState(enum.Enum):
    HEALTHY = "healthy"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class Recovery:
    failed_for: float  # seconds since the first failed batch
    dropped: int  # spans dropped meanwhile (failed batches and queue overflow)


class ExportHealth:
    """Healthy or failing, from batch results. Pure (the clock is injected) and not
    thread-safe: ExportMonitor serialises the calls."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.state = ExportState.HEALTHY
        self._since = 0.0
        self._dropped = 0

    def failed(self, spans: int) -> bool:
        """A batch of `spans` was not taken. True when this starts an outage."""
        if self.state is ExportState.FAILING:
            self._dropped += spans
            return False
        self.state = ExportState.FAILING
        self._since = self._clock()
        self._dropped = spans
        return True

    def overflowed(self, spans: int) -> None:
        """Spans dropped before export because the queue was full."""
        if self.state is ExportState.FAILING:
            self._dropped += spans

    def succeeded(self) -> Recovery | None:
        """A batch was taken. The outage it ends, if any."""
        if self.state is ExportState.HEALTHY:
            return None
        self.state = ExportState.HEALTHY
        return Recovery(self._clock() - self._since, self._dropped)


class SdkExportLogs(logging.Filter):
    """Drops the exporters' per-batch warnings and errors, keeping the first since the last
    `take` per thread (each batch processor exports on its own worker thread) as the reason
    of the failed batch: the first names the error, later ones say that retries ran out."""

    def __init__(self) -> None:
        super().__init__()
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if getattr(self._last, "message", None) is None:
            self._last.message = record.getMessage()
        return False

    def take(self) -> str | None:
        """What the exporter logged first on this thread since the last call."""
        message: str | None = getattr(self._last, "message", None)
        self._last.message = None
        return message


def sdk_export_logs() -> SdkExportLogs:
    """The filter installed on the SDK's exporter loggers (installed on first use; logging's
    loggers are process-wide, so one filter serves every exporter in the process)."""
    first = logging.getLogger(SDK_EXPORT_LOGGERS[0])
    for existing in first.filters:
        if isinstance(existing, SdkExportLogs):
            return existing
    quiet = SdkExportLogs()
    for name in SDK_EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    return quiet


class ExportMonitor:
    """One exporter's outage reporting: a warning when export starts failing, an info line
    with the drop count when it works again, the per-batch detail at debug level only."""

    def __init__(
        self,
        endpoint: str,
        clock: Callable[[], float],
        sdk_logs: SdkExportLogs | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._health = ExportHealth(clock)
        self._lock = threading.Lock()
        self._sdk_logs = sdk_logs or sdk_export_logs()

    @property
    def state(self) -> ExportState:
        return self._health.state

    def batch_failed(self, spans: int, error: BaseException | None = None) -> None:
        reason = self._sdk_logs.take() or (repr(error) if error else "exporter reported failure")
        with self._lock:
            started = self._health.failed(spans)
        if started:
            log.warning(
                "trace export to %s is failing, dropping spans until it recovers "
                "(counted in sidecar_spans_dropped_total): %s",
                self._endpoint,
                reason,
            )
        else:
            log.debug(
                "trace export to %s: batch of %d spans dropped: %s", self._endpoint, spans, reason
            )

    def batch_exported(self) -> None:
        self._sdk_logs.take()  # a retry that succeeded leaves its warning behind
        with self._lock:
            recovery = self._health.succeeded()
        if recovery is not None:
            log.warning(
                "trace export to %s recovered after %.1fs; %d spans were dropped meanwhile",
                self._endpoint,
                recovery.failed_for,
                recovery.dropped,
            )

    def overflowed(self, spans: int) -> None:
        with self._lock:
            self._health.overflowed(spans)
