"""What an outside attack over raw sockets found (issue "Hardening II"), each case pinned with
the figures the fix holds: unbounded trailers, one connection budget for every listener,
re-sent POSTs, 100 Continue inside an earlier response, unknown transfer codings, and the
smaller protocol cases (1xx, 101, 204 with Content-Length, a body broken before forwarding)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.doubles.raw_upstream import Reply
from tests.integration.hardening.conftest import (
    UPSTREAM,
    assert_error,
    eventually,
    exchange,
    parse_responses,
)

H = f"Host: {UPSTREAM}\r\n".encode()
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


# --------------------------------------------------------------------- 1. trailers


class _FloodClient(asyncio.Protocol):
    """Records every byte the sidecar sends, even when a reset follows (StreamReader would
    drop buffered data once the reset is seen)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = b""
        self.closed: asyncio.Future[None] = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


async def _flood(
    port: int, prefix: bytes, limit: int, filler: bytes = b"a"
) -> tuple[bytes, float, int]:
    """Send `prefix`, then `a` without end (up to `limit` bytes) until the sidecar answers;
    return what it answered, how long that took, and how much it accepted."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    transport, client = await loop.create_connection(_FloodClient, "127.0.0.1", port)
    transport.write(prefix)
    block = filler * 65536
    sent = 0
    while sent < limit and not client.data and not client.closed.done():
        transport.write(block)
        sent += len(block)
        async with asyncio.timeout(5):
            await client.writable.wait()
    async with asyncio.timeout(5):
        while not client.data and not client.closed.done():
            await asyncio.wait([client.closed], timeout=0.05)
    transport.close()
    return client.data, loop.time() - started, sent


async def test_trailer_flood_is_cut_at_the_head_limit_with_bounded_memory(guarded):
    up, sc, port = await guarded(limits={"header_read_timeout": "5s"})
    head = b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    prefix = head + b"5\r\nhello\r\n0\r\nX-T: "
    rss_before = _rss_kib()
    peak = rss_before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss_kib())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*[_flood(port, prefix, 16 * 1024 * 1024) for _ in range(10)])
    # a normal request is served at once meanwhile
    ex = await exchange(port, b"GET /normal HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    sampler.cancel()
    assert [r.status for r in ex.responses] == [200]
    for answer, elapsed, sent in results:
        resp = parse_responses(answer)
        assert resp, answer
        body = assert_error(resp[0], 431, "bad_request")
        assert "trailers" in body["message"]
        assert elapsed < 5.0, "a 4xx within the header timeout"
        # (what the client wrote: the sidecar took 16 KiB of it, the kernel buffers the rest)
        assert sent < 16 * 1024 * 1024, "answered before the client gave up"
    assert peak - rss_before <= 32 * 1024, f"RSS +{(peak - rss_before) // 1024} MiB"
    assert up.violations == []
    assert all(s.target == "/normal" for s in up.seen), "a cut request must not complete"


@pytest.mark.parametrize(
    ("prefix", "filler"),
    [
        (b"5;name=", b"a"),  # endless chunk extension
        (b"", b"0"),  # endless chunk-size line: leading zeros never overflow
        (b"5\r\nhello\r\n0\r\n" + b"X-Many: 1\r\n" * 200 + b"X-T: ", b"a"),  # many trailers
    ],
    ids=["chunk_extension", "chunk_size_zeros", "many_trailers"],
)
async def test_chunk_lines_and_trailers_share_the_head_limit(guarded, prefix, filler):
    up, sc, port = await guarded()
    head = b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    answer, _, sent = await _flood(port, head + prefix, 16 * 1024 * 1024, filler)
    assert_error(parse_responses(answer)[0], 431, "bad_request")
    assert sent < 16 * 1024 * 1024


# --------------------------------------------------------------------- 2. connection budgets


async def test_idle_inbound_connections_never_starve_the_outbound_listener(guarded):
    up, sc, outbound = await guarded(limits={"max_connections": 1000})
    inbound = sc.bound_port("listeners.inbound")
    idle = []
    for _ in range(1100):  # 10 % over the budget, all idle, on the public listener
        idle.append(await asyncio.open_connection("127.0.0.1", inbound))
    try:
        await eventually(lambda: len(sc.state.connections) >= 1000)
        failures = 0
        for i in range(50):
            ex = await exchange(
                outbound, b"GET /out%d HTTP/1.1\r\n" % i + H + b"Connection: close\r\n\r\n"
            )
            failures += [r.status for r in ex.responses] != [200]
        assert failures == 0, f"{failures} of 50 outbound requests failed"
        # and the inbound listener still serves: an idle connection makes room
        ex = await exchange(inbound, b"GET /in HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n")
        assert [r.status for r in ex.responses] == [200]
    finally:
        for _, w in idle:
            w.close()


async def test_listener_override_of_max_connections(guarded):
    up, sc, outbound = await guarded(
        limits={"max_connections": 1000}, listeners={"outbound_max_connections": 1}
    )
    r, w = await asyncio.open_connection("127.0.0.1", outbound)
    w.write(b"GET /busy HTTP/1.1\r\n")  # busy: a head in progress
    await eventually(lambda: any(c._url for c in sc.state.connections))
    ex = await exchange(outbound, b"GET /x HTTP/1.1\r\n" + H + b"\r\n")
    assert_error(ex.responses[0], 503, "overloaded")
    w.close()


# --------------------------------------------------------------------- 3. no re-sent POSTs


@pytest.mark.parametrize("retries", [{"attempts": 0}, {}], ids=["retries_off", "retries_on"])
async def test_non_idempotent_requests_are_never_sent_twice(guarded, retries):
    up, sc, port = await guarded(
        upstreams={
            "default": {
                "retries": retries,
                "circuit_breaker": {"enabled": False},
                "outlier_detection": {"enabled": False},
            }
        }
    )
    # Every 3rd request on a connection: received, then the connection closed unanswered.
    up.script.extend(
        [Reply(OK), Reply(OK), Reply(b"", close=True)] * 60  # more than the requests need
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    for seq in range(90):
        method = b"POST" if seq % 2 else b"PATCH"
        writer.write(
            method
            + b" /every3rst HTTP/1.1\r\n"
            + H
            + b"Content-Length: 0\r\nX-Seq: %d\r\n\r\n" % seq
        )
        data = b""
        async with asyncio.timeout(5):
            while not any(r.complete for r in parse_responses(data)):
                chunk = await reader.read(65536)
                assert chunk
                data += chunk
        statuses.append(parse_responses(data)[0].status)
    writer.close()
    seqs = [s.header("x-seq") for s in up.seen]
    assert len(seqs) == 90 and len(set(seqs)) == 90, "0 duplicated requests in 90"
    assert set(statuses) <= {200, 502} and statuses.count(502) > 0


async def test_stale_connection_resend_of_a_get_counts_against_the_retry_budget(guarded):
    up, sc, port = await guarded(
        upstreams={
            "default": {
                "retries": {"attempts": 2, "budget_ratio": 0.0, "min_retries_per_s": 0.0},
                "circuit_breaker": {"enabled": False},
                "outlier_detection": {"enabled": False},
            }
        }
    )
    up.script.extend([Reply(OK), Reply(b"", close=True)])
    ex = await exchange(
        port, b"GET /a HTTP/1.1\r\n" + H + b"\r\nGET /b HTTP/1.1\r\n" + H + b"\r\n", until=2
    )
    assert [r.status for r in ex.responses] == [200, 502]
    assert [s.target for s in up.seen] == ["/a", "/b"], "no budget: not sent again"


async def test_stale_connection_resend_of_a_get_within_budget(guarded):
    up, sc, port = await guarded()
    up.script.extend([Reply(OK), Reply(b"", close=True)])
    ex = await exchange(
        port, b"GET /a HTTP/1.1\r\n" + H + b"\r\nGET /b HTTP/1.1\r\n" + H + b"\r\n", until=2
    )
    assert [r.status for r in ex.responses] == [200, 200]
    assert [s.target for s in up.seen] == ["/a", "/b", "/b"]


# --------------------------------------------------------------------- 5. 100 Continue


async def test_100_continue_never_inside_an_earlier_response(guarded):
    up, sc, port = await guarded()
    gate = asyncio.Event()
    first = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\nzzzz"
    up.script.append(Reply(first, gate=gate, rest=b"zzzzzzzz"))
    up.script.append(
        Reply(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nsecond")
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /slow/6 HTTP/1.1\r\n" + H + b"\r\n"
        b"POST /echo?second HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    got = b""
    async with asyncio.timeout(5):
        while b"zzzz" not in got:
            got += await reader.read(65536)
    gate.set()  # the first response completes only now
    async with asyncio.timeout(5):
        while b"100 Continue" not in got:
            chunk = await reader.read(65536)
            assert chunk, got
            got += chunk
    writer.write(b"hello")
    async with asyncio.timeout(5):
        while not got.endswith(b"second"):
            chunk = await reader.read(65536)
            assert chunk, got
            got += chunk
    writer.close()
    assert got == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\n"
        b"zzzzzzzzzzzz"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nsecond"
    ), got
    assert [s.body for s in up.seen] == [b"", b"hello"]


async def test_no_100_continue_for_http_1_0(guarded):
    up, sc, port = await guarded()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.0\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    await eventually(lambda: up.connections >= 1)  # the head was parsed and is forwarded
    writer.write(b"hello")
    got = await _read_to_eof(reader)
    writer.close()
    assert b"100 Continue" not in got
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")


# --------------------------------------------------------------------- 7. transfer codings


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00rest",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
    ],
    ids=["gzip_close_delimited", "gzip_chunked"],
)
async def test_unknown_transfer_coding_from_upstream_is_502_not_reframed(guarded, reply):
    up, sc, port = await guarded()
    up.script.append(Reply(reply, close=True))
    ex = await exchange(port, b"GET /te HTTP/1.1\r\n" + H + b"\r\n", until=1)
    body = assert_error(ex.responses[0], 502, "upstream_reset")
    assert "Transfer-Encoding" in body["message"]


# --------------------------------------------------------------------- 11. smaller cases


async def test_body_broken_in_the_first_packet_is_400_before_any_upstream_io(guarded):
    up, sc, port = await guarded()
    ex = await exchange(
        port,
        b"POST /x HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n",
    )
    assert_error(ex.responses[0], 400, "bad_request")
    assert ex.eof
    assert up.connections == 0


@pytest.mark.parametrize("status", [204, 304])
async def test_no_content_response_loses_its_content_length(guarded, status):
    up, sc, port = await guarded()
    up.script.append(Reply(b"HTTP/1.1 %d X\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n" % status))
    ex = await exchange(port, b"GET /nc HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    head = ex.raw.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 %d" % status)
    assert b"content-length" not in head and b"transfer-encoding" not in head
    assert b"x-a: 1" in head


async def test_upstream_101_is_a_clean_502(guarded, caplog):
    up, sc, port = await guarded()
    up.script.append(
        Reply(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        )
    )
    with caplog.at_level(logging.DEBUG):
        ex = await exchange(port, b"GET /ws HTTP/1.1\r\n" + H + b"\r\n", until=1)
        body = assert_error(ex.responses[0], 502, "upstream_reset")
    assert "101" in body["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "HttpParserUpgrade" not in caplog.text


async def test_early_hints_are_forwarded_to_http_1_1_clients_only(guarded):
    up, sc, port = await guarded()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    up.script.extend([Reply(hints + OK), Reply(hints + OK)])
    ex = await exchange(port, b"GET /h HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert ex.raw.startswith(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
    ), ex.raw
    assert ex.raw.endswith(b"\r\n\r\nok")
    ex = await exchange(port, b"GET /h HTTP/1.0\r\n" + H + b"\r\n")
    assert ex.raw.startswith(b"HTTP/1.1 200 OK\r\n"), ex.raw


# --------------------------------------------------------------------- 6. retry buffering


async def test_retry_buffer_is_a_cap_across_all_in_flight_requests(guarded):
    up, sc, port = await guarded(
        limits={"retry_buffer_bytes": "4KiB"},
        upstreams={
            "default": {
                "retries": {"attempts": 1, "on": ["reset"]},
                "circuit_breaker": {"enabled": False},
                "outlier_detection": {"enabled": False},
            }
        },
    )
    gate = asyncio.Event()
    # every first try: received, held, then the connection closed unanswered (a reset)
    up.script.extend([Reply(b"", gate=gate, close=True) for _ in range(20)])
    body = b"x" * 1000
    put = b"PUT /p HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\nConnection: close\r\n\r\n" + body
    clients = [asyncio.create_task(exchange(port, put, timeout=10)) for _ in range(20)]
    await eventually(lambda: len(up.seen) == 20)
    # 20 bodies in flight, 4 of them (4 KiB) held for a retry
    assert sc.replay_buffers.held == 4000
    gate.set()
    statuses = sorted(r.status for ex in await asyncio.gather(*clients) for r in ex.responses)
    assert statuses == [200] * 4 + [502] * 16
    assert len(up.seen) == 24 and all(s.body == body for s in up.seen)
    assert sc.replay_buffers.held == 0
