"""gRPC vocabulary: timeouts, paths, Trailers-Only, status mapping, error replies."""

from __future__ import annotations

import pytest

from sidecar import grpc
from sidecar.errors import CircuitOpen, DeadlineExceeded, NoRoute, UpstreamTimeout, error_response
from sidecar.http import EMPTY_BODY, BytesBody, Headers, Response
from sidecar.resilience.classify import Outcome, classify_reply


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("1S", 1.0), ("250m", 0.25), ("100u", 1e-4), ("5n", 5e-9), ("2M", 120.0), ("1H", 3600.0)],
)
def test_parse_timeout(raw: str, seconds: float) -> None:
    assert grpc.parse_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "S", "123456789S", "1x", "-1S", "1.5S", "\u0661S"])
def test_parse_timeout_rejects_malformed(raw: str) -> None:
    assert grpc.parse_timeout(raw) is None


@pytest.mark.parametrize("seconds", [0.0, 0.0004, 0.25, 1.5, 99.0, 1e6])
def test_format_timeout_round_trips_without_shrinking(seconds: float) -> None:
    value = grpc.format_timeout(seconds)
    assert len(value) <= 9
    parsed = grpc.parse_timeout(value)
    assert parsed is not None and parsed >= seconds - 1e-9


def test_split_path() -> None:
    assert grpc.split_path("/pkg.Greeter/SayHello") == ("pkg.Greeter", "SayHello")
    assert grpc.split_path("/users/1/x") == ("", "")
    assert grpc.split_path("/") == ("", "")


def trailers_only(code: int) -> Response:
    return Response(
        200, Headers([("content-type", "application/grpc"), ("grpc-status", str(code))])
    )


def test_classify_reply_judges_trailers_only_by_its_http_equivalent() -> None:
    assert classify_reply(trailers_only(14)) is Outcome.STATUS_5XX
    assert classify_reply(trailers_only(13)) is Outcome.STATUS_5XX
    assert classify_reply(trailers_only(3)) is Outcome.SUCCESS  # the caller's mistake
    assert classify_reply(trailers_only(0)) is Outcome.SUCCESS
    # a message body follows: grpc-status in headers is not Trailers-Only
    streaming = Response(200, Headers([("grpc-status", "14")]), BytesBody(b"\0\0\0\0\1x"))
    assert classify_reply(streaming) is Outcome.SUCCESS
    assert classify_reply(Response(503, Headers(), EMPTY_BODY)) is Outcome.STATUS_5XX


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (NoRoute("x"), 12),
        (UpstreamTimeout("x"), 4),
        (DeadlineExceeded("x"), 4),
        (CircuitOpen("open", retry_after=3), 14),
    ],
)
def test_sidecar_errors_on_grpc_requests_are_trailers_only_statuses(err, code) -> None:
    resp = error_response(err, request_id="r1", grpc=True)
    assert resp.status == 200 and resp.body.length == 0
    assert resp.headers.get("grpc-status") == str(code)
    assert resp.headers.get("x-sidecar-error") == err.code
    assert resp.headers.get("content-type") == "application/grpc"
    assert grpc.trailers_only_status(resp) == code


def test_grpc_message_is_percent_encoded() -> None:
    assert grpc.encode_message("50% off\nnow ✓") == "50%25 off%0Anow %E2%9C%93"
