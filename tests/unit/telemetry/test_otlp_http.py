"""The OTLP/HTTP client against the OTLP receiver double on loopback: what a collector gets
(protobuf, headers, compression), which answers are retried and how long it waits, keep-alive
reuse, and that a dead or stopping collector never holds the export thread past its budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from sidecar.telemetry.otlp_http import (
    ClientSettings,
    OtlpHttpClient,
    OtlpHttpSpanExporter,
    parse_headers,
    retry_after,
    settings_from_environment,
)
from sidecar.telemetry.tracing import otlp_http_traces_url
from tests.conftest import free_port
from tests.doubles.otlp import OtlpReceiver


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


def span(name: str = "GET /users/{id}") -> ReadableSpan:
    context = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1)
    )
    return ReadableSpan(
        name=name,
        context=context,
        resource=Resource.create({"service.name": "bff"}),
        kind=SpanKind.SERVER,
        start_time=1_000,
        end_time=2_000,
    )


def sdk_encode(spans: object) -> bytes:
    return encode_spans(spans).SerializeToString()  # type: ignore[arg-type]


def client(receiver: OtlpReceiver, timeout: float = 5.0, **kw: object) -> OtlpHttpClient:
    url = otlp_http_traces_url(receiver.http_endpoint)
    return OtlpHttpClient(ClientSettings(url=url, timeout=timeout, headers={}, **kw))  # type: ignore[arg-type]


async def test_a_batch_arrives_as_otlp_protobuf_with_the_configured_headers(
    receiver: OtlpReceiver,
) -> None:
    settings = settings_from_environment(
        otlp_http_traces_url(receiver.http_endpoint),
        5.0,
        {"OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue,authorization=Bearer%20abc"},
    )
    exporter = OtlpHttpSpanExporter(OtlpHttpClient(settings), sdk_encode)
    result = await asyncio.to_thread(exporter.export, [span("a"), span("b")])
    assert result.name == "SUCCESS"
    assert [s.name for s in receiver.spans] == ["a", "b"]
    assert receiver.spans[0].service_name == "bff"
    headers = receiver.http_headers[0]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-tenant"] == "blue" and headers["authorization"] == "Bearer abc"


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
async def test_compressed_batches_are_marked_and_decode(
    receiver: OtlpReceiver, compression: str
) -> None:
    c = client(receiver, compression=compression)
    result = await asyncio.to_thread(c.post, sdk_encode([span()]))
    assert result.ok
    assert receiver.http_headers[0]["content-encoding"] == compression
    assert [s.name for s in receiver.spans] == ["GET /users/{id}"]


async def test_unavailable_is_retried_after_the_collectors_retry_after(
    receiver: OtlpReceiver,
) -> None:
    receiver.fail_next, receiver.retry_after = 2, "0"
    c = client(receiver)
    t0 = time.monotonic()
    result = await asyncio.to_thread(c.post, sdk_encode([span()]))
    assert result.ok and receiver.rejected == 2 and len(receiver.spans) == 1
    # Retry-After: 0 replaces the 1 s, 2 s backoff.
    assert time.monotonic() - t0 < 1.0


async def test_a_refusal_that_is_not_transient_is_not_retried(receiver: OtlpReceiver) -> None:
    receiver.fail_next, receiver.fail_status = 5, 400
    c = client(receiver)
    result = await asyncio.to_thread(c.post, sdk_encode([span()]))
    assert not result.ok and result.status == 400
    assert receiver.rejected == 1


async def test_a_retry_that_would_outlive_the_timeout_is_not_waited_for(
    receiver: OtlpReceiver,
) -> None:
    receiver.fail_next, receiver.retry_after = 5, "30"
    c = client(receiver, timeout=2.0)
    t0 = time.monotonic()
    result = await asyncio.to_thread(c.post, sdk_encode([span()]))
    assert not result.ok and result.status == 503
    assert time.monotonic() - t0 < 1.5 and receiver.rejected == 1


async def test_a_dead_collector_fails_the_batch_within_the_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    c = OtlpHttpClient(ClientSettings(url=url, timeout=1.5, headers={}))
    t0 = time.monotonic()
    result = await asyncio.to_thread(c.post, b"\x0a\x00")
    assert not result.ok and result.error is not None and "Connection" in result.error
    assert time.monotonic() - t0 < 2.5


async def test_shutdown_ends_a_backoff_wait() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    c = OtlpHttpClient(ClientSettings(url=url, timeout=30.0, headers={}))
    post = asyncio.create_task(asyncio.to_thread(c.post, b""))
    await asyncio.sleep(0.3)  # not synchronisation: lets the first attempt fail into its backoff
    t0 = time.monotonic()
    c.shutdown()
    result = await asyncio.wait_for(post, 5.0)
    assert not result.ok and result.error == "exporter shut down"
    assert time.monotonic() - t0 < 1.0


async def test_batches_share_one_keep_alive_connection(receiver: OtlpReceiver) -> None:
    c = client(receiver)
    for _ in range(3):
        assert (await asyncio.to_thread(c.post, sdk_encode([span()]))).ok
    assert len(set(receiver.http_peers)) == 1 and len(receiver.spans) == 3


async def test_a_keep_alive_connection_the_collector_closed_is_replaced_at_once(
    receiver: OtlpReceiver,
) -> None:
    c = client(receiver)
    assert (await asyncio.to_thread(c.post, sdk_encode([span()]))).ok
    # The collector restarts: the pooled connection is dead, the address answers again.
    port = receiver.http_port
    await receiver.stop()
    again = await OtlpReceiver(http_port=port).start()
    try:
        t0 = time.monotonic()
        assert (await asyncio.to_thread(c.post, sdk_encode([span()]))).ok
        assert time.monotonic() - t0 < 0.9, "re-sent after a backoff, not at once"
        assert len(again.spans) == 1
    finally:
        await again.stop()


def test_headers_from_the_environment() -> None:
    assert parse_headers("a=1, B=two%2Cthree ,bad,=x,") == {"a": "1", "b": "two,three"}
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=traces",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/etc/ca.pem",
    }
    s = settings_from_environment("http://c:4318/v1/traces", 3.0, env)
    assert s.headers == {"a": "traces"} and s.compression == "gzip"
    assert s.ca_file == "/etc/ca.pem" and s.cert_file is None
    assert (
        settings_from_environment(
            "http://c", 1.0, {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}
        ).compression
        == "none"
    )


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after("3", 0.0) == 3.0
    assert retry_after("-1", 0.0) == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert retry_after("soon", 0.0) is None and retry_after(None, 0.0) is None
