import asyncio

import pytest

from sidecar.errors import (
    CircuitOpen,
    DeadlineExceeded,
    NoHealthyEndpoints,
    Overloaded,
    UpstreamConnectFailure,
    UpstreamReset,
    UpstreamTimeout,
)
from sidecar.resilience.classify import (
    Outcome,
    classify_error,
    classify_response,
    error_type_of_exception,
    error_type_of_status,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (499, Outcome.SUCCESS),
        (500, Outcome.STATUS_5XX),
        (503, Outcome.STATUS_5XX),
        (599, Outcome.STATUS_5XX),
    ],
)
def test_statuses(status: int, outcome: Outcome) -> None:
    assert classify_response(status) is outcome


@pytest.mark.parametrize(
    ("exc", "outcome", "failure"),
    [
        (UpstreamConnectFailure("x"), Outcome.CONNECT_FAILURE, True),
        (UpstreamReset("x"), Outcome.RESET, True),
        (UpstreamTimeout("x"), Outcome.TIMEOUT, True),
        (DeadlineExceeded("x"), Outcome.TIMEOUT, True),
        (TimeoutError(), Outcome.TIMEOUT, True),
        (ConnectionResetError(), Outcome.RESET, True),
        (CircuitOpen("x"), Outcome.LOCAL, False),
        (Overloaded("x"), Outcome.LOCAL, False),
        (NoHealthyEndpoints("x"), Outcome.LOCAL, False),
        (asyncio.CancelledError(), Outcome.CANCELLED, False),
        (ValueError("bug"), Outcome.INTERNAL, False),
    ],
)
def test_errors(exc: BaseException, outcome: Outcome, failure: bool) -> None:
    assert classify_error(exc) is outcome
    assert outcome.is_failure is failure


def test_error_type_strings_are_a_closed_set() -> None:
    assert error_type_of_status(503) == "503"
    assert error_type_of_status(404) == ""
    assert error_type_of_exception(UpstreamTimeout("x")) == "upstream_timeout"
    assert error_type_of_exception(CircuitOpen("x")) == "circuit_open"
    assert error_type_of_exception(TimeoutError()) == "upstream_timeout"
    assert error_type_of_exception(ConnectionResetError()) == "upstream_reset"
    assert error_type_of_exception(asyncio.CancelledError()) == "cancelled"
    assert error_type_of_exception(KeyError("x")) == "internal"
