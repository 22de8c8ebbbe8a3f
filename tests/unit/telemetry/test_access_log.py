from __future__ import annotations

import io
import json
import threading

from sidecar.http import BytesBody, Headers, Request
from sidecar.telemetry.access_log import AccessLog


class BlockedStream(io.StringIO):
    """A stream whose writes wait until the test releases them (a stuck disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(s)


def request(i: int) -> Request:
    r = Request("GET", f"/p/{i}?q=1", Headers(), BytesBody(), upstream="u")
    r.request_id = f"r{i}"
    return r


def test_lines_are_json_with_ids() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.start()
    for i in range(3):
        log.log(request(i), 200, 0.0123, "ab" * 16, "", "outbound")
    log.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2"]
    assert records[0]["path"] == "/p/0?q=1"
    assert records[0]["duration_ms"] == 12.3
    assert records[0]["trace_id"] == "ab" * 16
    assert records[0]["time"].endswith("Z")


def test_full_queue_drops_and_counts_instead_of_blocking() -> None:
    out = BlockedStream()
    log = AccessLog(out, max_queue=5)
    log.start()
    log.log(request(0), 200, 0.001, "", "", "inbound")
    assert out.entered.wait(10)  # the writer is now stuck writing line 0
    for i in range(1, 101):
        log.log(request(i), 200, 0.001, "", "", "inbound")  # returns at once
    assert log.dropped == 95  # the queue holds 5
    out.release.set()
    log.close()
    assert len(out.getvalue().splitlines()) == 6
