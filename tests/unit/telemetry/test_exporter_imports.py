"""The OTLP/HTTP exporter is built without importing requests or urllib3 (~3.5 and ~1 MiB of RSS
per sidecar): it posts with the standard library."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from sidecar.config import TracingConfig
from sidecar.telemetry.tracing import make_exporter
exporter = make_exporter(TracingConfig(exporter="otlp_http", endpoint="http://127.0.0.1:4318"), 2.0)
assert exporter is not None
print("requests" in sys.modules, "grpc" in sys.modules, "urllib3" in sys.modules)
"""


def test_otlp_http_exporter_does_not_import_requests_urllib3_or_grpc() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "False", "False"]
