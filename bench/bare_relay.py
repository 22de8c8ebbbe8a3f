"""The floor for any Python HTTP proxy on this machine: uvloop + httptools, no features at all.

Each client connection is paired with one kept-alive upstream connection; requests and
responses are parsed only to find where each message ends and relayed as raw bytes. No
header rewriting, no routing, no timeouts, no telemetry: whatever this costs per request, a
Python proxy with features costs more. It calibrates what ratio against nginx is reachable.

    python -m bench.bare_relay --listen 127.0.0.1:8080 --upstream 127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.client.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        _, up = await self.loop.create_connection(lambda: _Upstream(self), self.host, self.port)
        self.upstream = up
        for chunk in self.pending:
            up.transport.write(chunk)  # type: ignore[union-attr]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.upstream is None or self.upstream.transport is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def response_done(self) -> None:
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(host: str, port: int, up_host: str, up_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Client(loop, up_host, up_port), host, port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.removeprefix("http://").rpartition(":")
    uvloop.run(serve(host, int(port), up_host, int(up_port)))


if __name__ == "__main__":
    main()
