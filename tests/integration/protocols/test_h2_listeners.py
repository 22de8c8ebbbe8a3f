"""HTTP/2 with prior knowledge on the listeners, next to HTTP/1.1 on the same port."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import require_binary
from tests.doubles.h2_upstream import H2Upstream


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        require_binary("curl"),
        "-sS",
        "--max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_curl_h2_and_http1_clients_reach_the_same_h2c_upstream(sidecar_factory):
    up = await H2Upstream().start()
    try:
        sc = await sidecar_factory(
            {
                "service": {"name": "caller", "port": up.port},
                "discovery": {"static": {"h2svc": [f"127.0.0.1:{up.port}"]}},
                "upstreams": {"h2svc": {"protocol": "h2c"}},
            }
        )
        port = sc.bound_port("listeners.outbound")
        rc, out, err = await curl(
            "--http2-prior-knowledge",
            "-H",
            "Host: h2svc",
            "-w",
            "\n%{http_version}",
            f"http://127.0.0.1:{port}/items/1",
        )
        assert rc == 0, err
        body, version = out.rsplit("\n", 1)
        assert version == "2"
        got = json.loads(body)
        assert got["protocol"] == "h2" and got["path"] == "/items/1"
        assert got["authority"] == "h2svc"
        # HTTP/1.1 client, same port, same h2c upstream; a body crosses versions too
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://127.0.0.1:{port}/upload", data=b"x" * 300_000, headers={"Host": "h2svc"}
            ) as r:
                assert r.status == 200 and r.version.minor == 1
                got = await r.json()
        assert got == {
            "method": "POST",
            "path": "/upload",
            "authority": "h2svc",
            "body_len": 300_000,
            "protocol": "h2",
        }
        # one multiplexed connection per endpoint
        assert up.connections == 1
        names = [k for k, _ in up.seen[-1]]
        assert "host" not in names and "connection" not in names
    finally:
        await up.stop()


async def test_h2_caller_reaches_http1_upstream_under_auto(upstreams, sidecar_factory):
    up = await upstreams("user-service")
    sc = await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
        }
    )
    port = sc.bound_port("listeners.outbound")
    for _ in range(2):  # first call learns the endpoint speaks HTTP/1.1 only
        rc, out, err = await curl(
            "--http2-prior-knowledge",
            "-H",
            "Host: user-service",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{port}/users/7",
        )
        assert rc == 0, err
        body, code = out.rsplit("\n", 1)
        assert code == "200", body
        assert json.loads(body)["path"] == "/users/7"
    # and the sidecar's own errors reach an HTTP/2 caller as HTTP errors
    rc, out, err = await curl(
        "--http2-prior-knowledge",
        "-H",
        "Host: nowhere",
        "-w",
        "\n%{http_code}",
        f"http://127.0.0.1:{port}/x",
    )
    assert out.endswith("\n404") and json.loads(out.rsplit("\n", 1)[0])["error"] == "no_route"
    # HTTP/1.1 unchanged on the same port
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/users/8", headers={"Host": "user-service"}) as r:
            assert r.status == 200 and (await r.json())["path"] == "/users/8"


async def test_fixed_listen_port_speaks_h2(grpc_upstreams, sidecar_factory):
    from sidecar.config import split_host_port
    from tests.conftest import free_port
    from tests.doubles.grpc_upstream import channel, method

    up = await grpc_upstreams()
    listen = f"127.0.0.1:{free_port()}"
    await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"greeter": [f"127.0.0.1:{up.port}"]}},
            "upstreams": {"greeter": {"listen": listen}},
        }
    )
    async with channel(split_host_port(listen)[1]) as ch:
        assert await method(ch, "unary_unary", "Say")(b"fixed", timeout=5) == b"hello fixed"


async def test_obs_text_header_values_cross_to_h2_byte_for_byte(sidecar_factory):
    """HTTP/1.1 allows obs-text (bytes 0x80-0xff) in field values; the HTTP/2 side sends the
    same bytes (not their UTF-8 re-encoding)."""
    up = await H2Upstream().start()
    try:
        sc = await sidecar_factory(
            {
                "service": {"name": "caller", "port": up.port},
                "discovery": {"static": {"h2svc": [f"127.0.0.1:{up.port}"]}},
                "upstreams": {"h2svc": {"protocol": "h2c"}},
            }
        )
        port = sc.bound_port("listeners.outbound")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /obs HTTP/1.1\r\nHost: h2svc\r\nX-Name: caf\xe9\r\nConnection: close\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200"), head
        # the double decodes as latin-1: one character per byte sent
        assert ("x-name", "caf\xe9") in up.seen[-1]
    finally:
        await up.stop()


async def test_h2_caller_streaming_a_body_reaches_http1_upstream_under_auto(
    upstreams, sidecar_factory
):
    """The first request to an endpoint not yet known to speak HTTP/1.1 only goes out as
    HTTP/2; the endpoint answers the preface in HTTP/1.x. A body still streaming in from the
    caller (not replayable) must not be lost to that probe: nothing of it is taken before the
    upstream's SETTINGS, so the request crosses over to HTTP/1.1 whole."""
    import h2.config
    import h2.connection
    import h2.events

    up = await upstreams("user-service")
    sc = await sidecar_factory(
        {
            "service": {"name": "caller", "port": up.port},
            "discovery": {"static": {"user-service": [f"127.0.0.1:{up.port}"]}},
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.bound_port("listeners.outbound"))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    head = [(":method", "POST"), (":scheme", "http"), (":authority", "user-service")]
    conn.send_headers(1, [*head, (":path", "/echo"), ("content-length", "100")])
    writer.write(conn.data_to_send())
    status, body = "", b""
    try:
        async with asyncio.timeout(10):
            for i in range(10):  # the body trickles in: it is a stream, not a replayable copy
                await asyncio.sleep(0.02)
                conn.send_data(1, b"x" * 10, end_stream=i == 9)
                writer.write(conn.data_to_send())
            done = False
            while not done:
                data = await reader.read(65536)
                assert data, "connection closed before the response"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = dict(ev.headers)[b":status"].decode()
                    elif isinstance(ev, h2.events.DataReceived):
                        body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                    elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                        done = True
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert status == "200", body
    assert json.loads(body)["len"] == 100
    assert [s.body_len for s in up.seen] == [100]
