"""Shared test fixtures: free ports, required external binaries."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def require_all() -> bool:
    return os.environ.get("SIDECAR_REQUIRE_ALL") == "1"


def require_binary(name: str) -> str:
    """Path of an external tool a test needs. Missing: skip locally, fail under
    SIDECAR_REQUIRE_ALL=1 (CI), so a missing install step can never hide as a skip."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed (make test installs it via scripts/ensure-system-packages.sh)"
        if require_all():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    return free_port()
