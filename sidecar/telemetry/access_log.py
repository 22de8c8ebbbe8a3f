"""Access log (off by default, as in Envoy and Linkerd): one JSON line per request with its
trace id and request id.

The event loop only builds a tuple and puts it on a bounded queue; a background thread formats
and writes. When the writer cannot keep up, lines are dropped and counted — a slow disk must
never slow requests."""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from typing import TextIO

from sidecar.http import Request

_Entry = tuple[float, str, str, str, int, float, str, str, str, str, str, int]


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, max_queue: int = 10000) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._queue: queue.Queue[_Entry | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.dropped = 0  # only the event loop thread writes it

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="sidecar-access-log", daemon=True
            )
            self._thread.start()

    def log(
        self,
        request: Request,
        status: int,
        duration: float,
        trace_id: str,
        error_type: str,
        direction: str,
    ) -> None:
        ep = request.endpoint
        entry: _Entry = (
            time.time(),
            direction,
            request.method,
            request.target,
            status,
            duration,
            request.upstream,
            ep.address if ep is not None else "",
            trace_id,
            request.request_id,
            error_type,
            request.attempt,
        )
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer (blocking; call off the event loop)."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            lines = []
            stop = False
            while entry is not None:
                lines.append(format_entry(entry))
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True
            if lines:
                try:
                    self._stream.write("".join(lines))
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # a closed or broken stream must not kill the writer
            if stop:
                return


def format_entry(entry: _Entry) -> str:
    (
        ts,
        direction,
        method,
        target,
        status,
        duration,
        upstream,
        endpoint,
        trace_id,
        request_id,
        error_type,
        attempt,
    ) = entry
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
        "direction": direction,
        "method": method,
        "path": target,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "upstream": upstream,
        "endpoint": endpoint,
        "attempts": attempt,
        "error": error_type,
        "trace_id": trace_id,
        "request_id": request_id,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"
