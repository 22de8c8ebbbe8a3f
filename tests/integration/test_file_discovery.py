"""FileResolver on real files, through the Directory."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.discovery.file import FileResolver
from sidecar.discovery.resolver import Directory
from sidecar.discovery.static import StaticResolver
from tests.unit.discovery.fakes import eventually


def write(path: Path, text: str) -> None:
    """Write and move mtime forward explicitly: coarse filesystem clocks can't hide a change."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def addresses(directory: Directory, name: str) -> list[str] | None:
    snap = directory.get(name)
    return None if snap is None else [e.address for e in snap.endpoints]


async def test_file_changes_bad_file_and_removal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "endpoints.yaml"
    write(path, 'user: ["127.0.0.1:8001"]\ndocs: ["127.0.0.1:9001"]\n')
    resolver = FileResolver(path, interval=0.02)
    directory = Directory([resolver])
    resolver.use_withdraw(directory.withdraw)
    directory.start()
    try:
        await eventually(lambda: addresses(directory, "user") == ["127.0.0.1:8001"])
        assert resolver.pending_sync() == []
        assert directory.is_routable("docs")

        write(path, 'user: ["127.0.0.1:8001", "127.0.0.1:8002"]\ndocs: ["127.0.0.1:9001"]\n')
        await eventually(
            lambda: addresses(directory, "user") == ["127.0.0.1:8001", "127.0.0.1:8002"]
        )

        write(path, 'user: ["127.0.0.1:not-a-port"]\n')
        await eventually(lambda: resolver.last_error is not None)
        assert "invalid address" in caplog.text
        assert addresses(directory, "user") == ["127.0.0.1:8001", "127.0.0.1:8002"]  # old stay
        assert addresses(directory, "docs") == ["127.0.0.1:9001"]

        write(path, 'user: ["127.0.0.1:8003"]\n')  # valid again, docs removed
        await eventually(lambda: directory.get("docs") is None)
        assert addresses(directory, "user") == ["127.0.0.1:8003"]
        assert not directory.is_routable("docs")  # → 404 no_route
        assert resolver.last_error is None
    finally:
        await directory.stop()


async def test_missing_file_is_not_ready_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    path = tmp_path / "missing.yaml"
    resolver = FileResolver(path, interval=0.01)
    directory = Directory([resolver])
    directory.start()
    try:
        await eventually(lambda: resolver.last_error is not None)
        for _ in range(5):
            resolver.poll(directory.publish)
        assert caplog.text.count("endpoint file rejected") == 1
        assert resolver.pending_sync() == [
            f"endpoint file cannot read {path}: No such file or directory"
        ]
        write(path, 'user: ["127.0.0.1:8001"]\n')
        await eventually(lambda: addresses(directory, "user") == ["127.0.0.1:8001"])
        assert resolver.pending_sync() == []
    finally:
        await directory.stop()


async def test_static_wins_over_file_for_the_same_name(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    write(path, 'user: ["127.0.0.1:9999"]\nother: ["127.0.0.1:7000"]\n')
    file_resolver = FileResolver(path, interval=0.02)
    directory = Directory([StaticResolver({"user": ["127.0.0.1:8001"]}), file_resolver])
    file_resolver.use_withdraw(directory.withdraw)
    directory.start()
    try:
        await eventually(lambda: addresses(directory, "other") == ["127.0.0.1:7000"])
        assert addresses(directory, "user") == ["127.0.0.1:8001"]
    finally:
        await directory.stop()


async def test_readyz_says_why_the_endpoint_file_gives_no_endpoints(
    tmp_path: Path, upstreams: Any, sidecar_factory: Any
) -> None:
    app = await upstreams("app")
    path = tmp_path / "endpoints.yaml"
    sc = await sidecar_factory(
        {"service": {"name": "bff", "port": app.port}, "discovery": {"file": {"path": str(path)}}}
    )
    admin = sc.config.listeners.admin
    async with aiohttp.ClientSession() as s:

        async def readyz() -> tuple[int, Any]:
            async with s.get(f"http://{admin}/readyz") as r:
                return r.status, await r.json()

        status, body = await readyz()
        assert status == 503
        assert f"cannot read {path}: No such file or directory" in " ".join(body["reasons"])
        write(path, "user: [127.0.0.1:8001, 'http://10.0.0.1:8002/v1']\n")
        await eventually(
            lambda: (
                sc.discovery.file.last_error is not None and "/v1" in sc.discovery.file.last_error
            )
        )
        status, body = await readyz()
        assert status == 503
        assert "invalid address 'http://10.0.0.1:8002/v1'" in " ".join(body["reasons"])
        write(path, "user: [127.0.0.1:8001]\n")
        await eventually(lambda: not sc.discovery.file.pending_sync(), within=5)
        # Readiness also probes the local app; on a loaded machine one probe can be slow.
        deadline = time.monotonic() + 10
        while (answer := await readyz()) != (200, {"status": "ready"}):
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)
