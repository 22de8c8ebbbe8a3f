"""The telemetry layers composed over a terminal handler that plays the upstream."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from sidecar.config import TracingConfig
from sidecar.errors import CircuitOpen, UpstreamReset
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.stack import Handler, compose
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.layers import ClientTelemetryLayer, ServerTelemetryLayer
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.tracing import Tracing, build_tracing
from sidecar.vocab.endpoint import Endpoint
from tests.unit.telemetry.fakes import FakeClock

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Upstream:
    """Terminal handler: records forwarded headers, takes `latency` on the fake clock."""

    def __init__(self, clock: FakeClock, status: int = 200, latency: float = 0.05) -> None:
        self.clock, self.status, self.latency = clock, status, latency
        self.seen: list[Headers] = []
        self.during: list[float] = []
        self.metrics: Metrics | None = None

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request.headers.copy())
        if self.metrics is not None:
            self.during.append(
                self.metrics.registry.get_sample_value(
                    "sidecar_inflight_requests",
                    {"service": "bff", "direction": "outbound", "upstream": "user-service"},
                )
                or 0.0
            )
        self.clock.advance(self.latency)
        return Response(self.status, Headers(), BytesBody(b"hi"))


class Retry:
    """A stand-in for the retry layer: tries twice when the first answer is a 503."""

    def wrap(self, inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await inner(request)
            if response.status == 503:
                request.attempt += 1
                request.retry_reason = "503"
                response = await inner(request)
            return response

        return handle


class Env:
    def __init__(
        self,
        sampler: str = "always_on",
        direction: str = "outbound",
        access_log: AccessLog | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics("bff", ["/users/{id}"])
        self.tracing: Tracing = build_tracing(
            TracingConfig(
                exporter="none",
                sampler=sampler,  # type: ignore[arg-type]
                propagators=["tracecontext", "b3"],
            ),
            "bff",
        )
        self.server = ServerTelemetryLayer(
            direction,
            tracing=self.tracing,
            metrics=self.metrics,
            access_log=access_log,
            server_address="bff.local",
            clock=self.clock,
        )
        self.client = ClientTelemetryLayer(
            tracing=self.tracing, metrics=self.metrics, clock=self.clock
        )

    def spans(self, kind: str) -> list[ReadableSpan]:
        return [s for s in self.buffered() if s.kind.name == kind.upper()]

    def buffered(self) -> list[ReadableSpan]:
        # Spans reach the buffer once the loop callback that ended them is over; the test
        # reads them within that callback.
        self.tracing.force_flush()
        return self.tracing.buffer.spans()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"service": "bff", **labels})


def req(
    headers: list[tuple[str, str]] | None = None, method: str = "GET", path: str = "/users/7"
) -> Request:
    r = Request(
        method,
        path,
        Headers(headers or []),
        BytesBody(),
        upstream="user-service",
        authority="user-service",
    )
    r.endpoint = Endpoint("10.0.0.5", 8080)
    return r


async def test_trace_continues_and_upstream_sees_client_span_as_parent() -> None:
    env = Env()
    up = Upstream(env.clock)
    handler = compose([env.server, env.client], up)
    response = await handler(req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")]))
    assert response.status == 200
    (server,) = env.spans("server")
    (client,) = env.spans("client")
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert client.parent.span_id == server.context.span_id
    client_hex = f"{client.context.span_id:016x}"
    assert up.seen[0].get("traceparent") == f"00-{CALLER_TRACE}-{client_hex}-01"
    assert up.seen[0].get("b3") == f"{CALLER_TRACE}-{client_hex}-1"
    attrs = dict(server.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/users/{id}"
    assert attrs["url.path"] == "/users/7"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "bff.local"
    assert attrs["http.request.header.x-request-id"] == (up.seen[0].get("x-request-id"),)
    assert "error.type" not in attrs
    c = dict(client.attributes or {})
    assert c["sidecar.upstream"] == "user-service"
    assert c["sidecar.endpoint"] == "10.0.0.5:8080"
    assert c["sidecar.attempt"] == 1
    assert c["server.address"] == "user-service" and c["server.port"] == 8080


async def test_new_trace_when_none_incoming() -> None:
    env = Env()
    up = Upstream(env.clock)
    await compose([env.server, env.client], up)(req())
    (server,) = env.spans("server")
    assert server.parent is None
    assert up.seen[0].get("traceparent", "").startswith(f"00-{server.context.trace_id:032x}-")


async def test_request_id_kept_or_generated() -> None:
    env = Env()
    up = Upstream(env.clock)
    handler = compose([env.server, env.client], up)
    await handler(req([("x-request-id", "abc-123")]))
    await handler(req())
    await handler(req([("x-request-id", "x" * 500)]))
    kept, generated, replaced = (h.get("x-request-id") for h in up.seen)
    assert kept == "abc-123"
    assert generated and len(generated) == 32 and int(generated, 16) >= 0
    assert replaced and len(replaced) == 32


async def test_sidecar_error_becomes_design_reply_with_trace_and_request_id() -> None:
    env = Env(direction="inbound")

    async def open_breaker(request: Request) -> Response:
        raise CircuitOpen("breaker open", upstream="user-service", retry_after=30)

    handler = compose([env.server, env.client], open_breaker)
    response = await handler(req([("x-request-id", "rid-1")]))
    assert response.status == 503
    assert response.headers.get("x-sidecar-error") == "circuit_open"
    body = json.loads(response.body.data)  # type: ignore[attr-defined]
    (server,) = env.spans("server")
    assert body["trace_id"] == f"{server.context.trace_id:032x}"
    assert body["request_id"] == "rid-1"
    assert server.attributes["error.type"] == "circuit_open"
    assert server.status.status_code.name == "ERROR"
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="503",
            error_type="circuit_open",
        )
        == 1
    )
    assert (
        env.sample(
            "http_client_request_duration_seconds_count",
            upstream="user-service",
            http_request_method="GET",
            http_response_status_code="",
            error_type="circuit_open",
        )
        == 1
    )


async def test_fallback_reply_counts_as_sidecar_error_type() -> None:
    env = Env(direction="inbound")

    async def fallback(request: Request) -> Response:
        return Response(200, Headers([("x-sidecar-fallback", "static")]), error_code="circuit_open")

    await compose([env.server], fallback)(req())
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="200",
            error_type="circuit_open",
        )
        == 1
    )


async def test_upstream_5xx_is_an_error_on_spans_but_not_a_sidecar_error_on_server_metric() -> None:
    env = Env(direction="inbound")
    await compose([env.server, env.client], Upstream(env.clock, status=500))(req())
    (server,) = env.spans("server")
    (client,) = env.spans("client")
    assert server.attributes["error.type"] == "500" and client.attributes["error.type"] == "500"
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="500",
            error_type="",
        )
        == 1
    )
    assert (
        env.sample(
            "http_client_request_duration_seconds_count",
            upstream="user-service",
            http_request_method="GET",
            http_response_status_code="500",
            error_type="500",
        )
        == 1
    )


async def test_retries_are_child_attempt_spans() -> None:
    env = Env()
    statuses = iter([503, 200])

    async def flaky(request: Request) -> Response:
        return Response(next(statuses), Headers())

    response = await compose([env.server, Retry(), env.client], flaky)(req())
    assert response.status == 200
    (server,) = env.spans("server")
    attempts = env.spans("client")
    assert [a.attributes["sidecar.attempt"] for a in attempts] == [1, 2]
    assert all(a.parent.span_id == server.context.span_id for a in attempts)
    assert "sidecar.retry_reason" not in attempts[0].attributes
    assert attempts[1].attributes["sidecar.retry_reason"] == "503"


async def test_durations_overhead_and_inflight_on_a_fake_clock() -> None:
    env = Env()
    up = Upstream(env.clock, latency=0.25)
    up.metrics = env.metrics

    class SidecarWork:
        """Time spent inside the sidecar around the upstream call."""

        def wrap(self, inner: Handler) -> Handler:
            async def handle(request: Request) -> Response:
                env.clock.advance(0.001)
                return await inner(request)

            return handle

    request = req()
    request.start = env.clock.monotonic() - 0.0005  # parsed before the layer ran
    await compose([env.server, SidecarWork(), env.client], up)(request)
    assert request.upstream_time == pytest.approx(0.25)
    assert up.during == [1.0]
    assert (
        env.sample("sidecar_inflight_requests", direction="outbound", upstream="user-service") == 0
    )
    assert env.sample("sidecar_inflight_requests", direction="outbound", upstream="") == 0
    # The outbound listener's requests are the app's calls, not traffic the service
    # receives: they are in the client histogram, never in the (inbound) server one.
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="200",
            error_type="",
        )
        is None
    )
    assert env.sample(
        "http_client_request_duration_seconds_sum",
        upstream="user-service",
        http_request_method="GET",
        http_response_status_code="200",
        error_type="",
    ) == pytest.approx(0.25)
    assert env.sample("sidecar_proxy_overhead_seconds_sum", direction="outbound") == pytest.approx(
        0.0015
    )
    assert (
        env.sample("sidecar_proxy_overhead_seconds_bucket", direction="outbound", le="0.0025") == 1
    )
    assert (
        env.sample("sidecar_proxy_overhead_seconds_bucket", direction="outbound", le="0.001") == 0
    )


async def test_exemplar_carries_the_span_trace_id() -> None:
    env = Env()
    await compose([env.server, env.client], Upstream(env.clock))(
        req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")])
    )
    body, _ = env.metrics.render("application/openmetrics-text")
    exemplars: dict[str, Any] = {
        f.name: s.exemplar
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.exemplar is not None
    }
    assert exemplars["http_client_request_duration_seconds"].labels == {"trace_id": CALLER_TRACE}


async def test_sampled_out_requests_record_nothing_but_still_propagate() -> None:
    env = Env(sampler="parentbased_always_on", direction="inbound")
    up = Upstream(env.clock)
    await compose([env.server, env.client], up)(
        req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")])
    )
    assert env.buffered() == []
    sent = up.seen[0].get("traceparent", "")
    assert sent.startswith(f"00-{CALLER_TRACE}-") and sent.endswith("-00")
    body, _ = env.metrics.render("application/openmetrics-text")
    assert b"trace_id" not in body
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="200",
            error_type="",
        )
        == 1
    )


async def test_unexpected_exception_is_recorded_and_reraised() -> None:
    env = Env()

    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await compose([env.server, env.client], broken)(req())
    (server,) = env.spans("server")
    assert server.attributes["error.type"] == "internal"
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="500",
            error_type="internal",
        )
        == 1
    )
    assert env.sample("sidecar_inflight_requests", direction="outbound", upstream="") == 0


async def test_outbound_bug_sampled_out_counts_under_the_arriving_route() -> None:
    # Sampled out on outbound, the route is matched only when something needs it: a bug
    # after routing rewrote the target must still count under the arriving path's route.
    env = Env(sampler="always_off")

    async def broken(request: Request) -> Response:
        request.target = "/elsewhere"
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await compose([env.server, env.client], broken)(req())
    assert env.buffered() == []
    assert (
        env.sample(
            "http_server_request_duration_seconds_count",
            http_request_method="GET",
            http_route="/users/{id}",
            http_response_status_code="500",
            error_type="internal",
        )
        == 1
    )


async def test_client_layer_classifies_raised_errors() -> None:
    env = Env()

    async def reset(request: Request) -> Response:
        raise UpstreamReset("reset", upstream="user-service")

    response = await compose([env.server, env.client], reset)(req())
    assert response.status == 502
    (client,) = env.spans("client")
    assert client.attributes["error.type"] == "upstream_reset"


async def test_inbound_server_span_is_the_local_apps_parent() -> None:
    env = Env(direction="inbound")
    up = Upstream(env.clock)
    await compose([env.server], up)(req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")]))
    (server,) = env.spans("server")
    assert up.seen[0].get("traceparent") == (f"00-{CALLER_TRACE}-{server.context.span_id:016x}-01")


async def test_unknown_methods_are_other() -> None:
    env = Env()
    await compose([env.server], Upstream(env.clock))(req(method="PROPFIND"))
    (server,) = env.spans("server")
    assert server.name == "_OTHER /users/{id}"
    assert server.attributes["http.request.method"] == "_OTHER"
    assert server.attributes["http.request.method_original"] == "PROPFIND"


async def test_access_log_line_has_trace_and_request_id() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.start()
    env = Env(access_log=log)
    await compose([env.server, env.client], Upstream(env.clock))(
        req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("x-request-id", "r-9")])
    )
    log.close()
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["trace_id"] == CALLER_TRACE
    assert record["request_id"] == "r-9"
    assert record["status"] == 200 and record["upstream"] == "user-service"
    assert record["path"] == "/users/7" and record["direction"] == "outbound"


async def test_spans_record_the_deadline_given_and_received() -> None:
    env = Env(direction="inbound")

    class Deadline:
        """Stands in for the deadline layer: it sets the budget it gives the next hop."""

        def wrap(self, inner: Handler) -> Handler:
            async def handle(request: Request) -> Response:
                request.headers.set("x-sidecar-expected-timeout-ms", "750")
                return await inner(request)

            return handle

    handler = compose([env.server, Deadline(), env.client], Upstream(env.clock))
    await handler(req([("x-sidecar-expected-timeout-ms", "900")]))
    (server,) = env.spans("server")
    (client,) = env.spans("client")
    assert server.attributes["sidecar.expected_timeout_ms"] == 900
    assert client.attributes["sidecar.expected_timeout_ms"] == 750
    await handler(req([("x-sidecar-expected-timeout-ms", "soon")]))
    assert "sidecar.expected_timeout_ms" not in env.spans("server")[-1].attributes


async def test_sampled_out_ids_reach_the_upstream_in_every_format_with_a_fresh_span_id() -> None:
    env = Env(sampler="parentbased_always_on")
    up = Upstream(env.clock)
    handler = compose([env.server, env.client], up)
    for _ in range(2):
        await handler(req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")]))
    first, second = (h.get("traceparent", "").split("-") for h in up.seen)
    assert first[1] == second[1] == CALLER_TRACE and first[3] == second[3] == "00"
    assert CALLER_SPAN not in (first[2], second[2]) and first[2] != second[2]
    assert up.seen[0].get("b3") == f"{CALLER_TRACE}-{first[2]}-0"
    assert env.buffered() == []


async def test_sampled_out_requests_keep_baggage_and_the_trace_id_in_error_replies() -> None:
    env = Env(sampler="parentbased_always_on")
    up = Upstream(env.clock)
    await compose([env.server, env.client], up)(
        req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"), ("baggage", "user=42")])
    )
    assert up.seen[0].get("baggage") == "user=42"

    async def refuse(request: Request) -> Response:
        raise CircuitOpen("open", upstream="user-service")

    response = await compose([env.server, env.client], refuse)(
        req([("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")])
    )
    assert response.status == 503
    assert isinstance(response.body, BytesBody)
    assert CALLER_TRACE in response.body.data.decode()
