"""The OTLP/HTTP exporter is built without importing requests, urllib3 or protobuf (~3.5, ~1 and
~2 MiB of RSS per sidecar): it encodes with otlp_wire and posts with the standard library."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from sidecar.config import TracingConfig
from sidecar.telemetry.tracing import make_exporter
exporter = make_exporter(TracingConfig(exporter="otlp_http", endpoint="http://127.0.0.1:4318"), 2.0)
assert exporter is not None
print(*(m in sys.modules for m in ("requests", "grpc", "urllib3", "google.protobuf")))
"""


def test_otlp_http_exporter_does_not_import_requests_urllib3_grpc_or_protobuf() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False"] * 4
