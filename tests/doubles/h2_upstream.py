"""An h2c (HTTP/2 cleartext, prior knowledge) upstream double on the h2 library.

Answers every request with JSON {"method", "path", "authority", "body_len", "protocol": "h2"}
after reading the whole body; records the requests' header lists in `seen`. `status` sets the
answer's status, `silent` makes it answer nothing (tests/integration/protocols/tls_upstream.py
serves it over TLS). It speaks only HTTP/2: a connection that opens with anything but
the HTTP/2 preface (an HTTP/1.1 request) is counted in `refused_http1` and closed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class _Conn(asyncio.Protocol):
    def __init__(self, up: H2Upstream) -> None:
        self.up = up
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        )
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, int] = {}
        self.heads: dict[int, dict[str, str]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.up.connections += 1
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.up.refused_http1 += 1
            assert self.transport is not None
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id] = dict(ev.headers)  # type: ignore[arg-type]
                self.up.seen.append(list(ev.headers))  # type: ignore[arg-type]
                self.bodies[ev.stream_id] = 0
                if ev.stream_ended is not None:
                    self.respond(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] += len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self.heads:
                self.respond(ev.stream_id)
        self.flush()

    def respond(self, sid: int) -> None:
        head = self.heads.pop(sid, None)
        if head is None or self.up.silent:
            return
        body = json.dumps(
            {
                "method": head.get(":method"),
                "path": head.get(":path"),
                "authority": head.get(":authority"),
                "body_len": self.bodies.pop(sid, 0),
                "protocol": "h2",
            }
        ).encode()
        self.conn.send_headers(
            sid,
            [
                (":status", str(self.up.status)),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        self.conn.send_data(sid, body, end_stream=True)


@dataclass
class H2Upstream:
    port: int = 0
    connections: int = 0
    seen: list[list[tuple[str, str]]] = field(default_factory=list)
    server: asyncio.Server | None = None
    status: int = 200
    silent: bool = False
    refused_http1: int = 0

    async def start(self) -> H2Upstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
