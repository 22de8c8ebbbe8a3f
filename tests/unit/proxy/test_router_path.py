"""OutboundRouter.path_for: which path a request takes, and that a published name is routed
without asking the composition root whether it is configured (the per-request shortcut)."""

from __future__ import annotations

import pytest

from sidecar.discovery.endpoints import EndpointSet
from sidecar.discovery.resolver import Directory, Publish
from sidecar.errors import NoRoute
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.proxy.routing import OutboundRouter
from sidecar.vocab.endpoint import Endpoint


class _Names:
    """A resolver that knows a fixed set of names and publishes nothing by itself."""

    source = "static"

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names

    def static_names(self) -> frozenset[str]:
        return self._names

    async def run(self, publish: Publish) -> None:  # pragma: no cover - not started here
        return None

    def can_resolve(self, name: str) -> bool:
        return False

    def start_watch(self, name: str) -> None:  # pragma: no cover - never a lazy name here
        return None


async def _path(request: Request) -> Response:  # pragma: no cover - only compared
    raise AssertionError(request.target)


def _request(host: str) -> Request:
    return Request(method="GET", target="/", headers=Headers([("host", host)]), body=BytesBody())


def _router(configured: set[str], asked: list[str]) -> tuple[OutboundRouter, Directory]:
    directory = Directory([_Names(frozenset({"api", "idle"}))])

    def is_configured(name: str) -> bool:
        asked.append(name)
        return name in configured

    return OutboundRouter(directory, lambda name: _path, is_configured), directory


def test_a_published_name_takes_its_path_without_the_configured_check() -> None:
    asked: list[str] = []
    router, directory = _router({"api"}, asked)
    directory.publish(EndpointSet("api", (Endpoint("10.0.0.1", 80),), "static", 0.0))
    request = _request("api:8080")
    assert router.path_for(request) is _path
    assert request.upstream == "api"
    assert asked == []
    assert directory.take_used() == {"api"}  # still noted as in use for lazy watches


def test_a_configured_name_without_a_snapshot_waits_for_discovery() -> None:
    asked: list[str] = []
    router, directory = _router({"idle"}, asked)
    request = _request("idle")
    assert router.path_for(request) is None
    assert request.upstream == "idle"
    assert asked == ["idle"]


def test_an_unknown_name_is_refused() -> None:
    router, _ = _router(set(), [])
    with pytest.raises(NoRoute, match="unknown upstream 'nowhere'"):
        router.path_for(_request("nowhere"))


def test_a_name_already_chosen_is_not_checked_again() -> None:
    # A pinned listener names the upstream itself: only whether it is published counts.
    asked: list[str] = []
    router, directory = _router(set(), asked)
    request = _request("whatever-the-client-says")
    request.upstream = "api"
    assert router.path_for(request) is None
    directory.publish(EndpointSet("api", (Endpoint("10.0.0.1", 80),), "static", 0.0))
    assert router.path_for(request) is _path
    assert asked == []
