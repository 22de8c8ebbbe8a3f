"""A caller that goes away mid-request (a sidecar stopping) is not a service error: the demo
services log no traceback for it, so a clean demo stop leaves clean logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from demo_services.common import faults_from_env
from demo_services.retrieval_service import create_app


async def test_client_gone_mid_body_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    runner = web.AppRunner(create_app(faults_from_env({}, seed=1)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with caplog.at_level(logging.DEBUG):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /retrieve HTTP/1.1\r\nHost: r\r\ncontent-type: application/json\r\n"
                b'content-length: 1000\r\n\r\n{"query": '
            )
            await writer.drain()
            server = runner.server
            assert server is not None
            await _until(lambda: bool(server.connections))
            await asyncio.sleep(0)  # let the handler start reading the body
            # The handler waits for the rest of the body; the caller vanishes.
            writer.transport.abort()
            await _until(lambda: not server.connections)  # connection_lost has run
        finally:
            # Waits for in-flight handlers, so whatever they log is logged by now.
            await runner.cleanup()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def _until(check: object, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
