"""The last filter of the inbound path: the request is for the local app."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sidecar.http import Response
from sidecar.stack import Exchange, Filter
from sidecar.transport.tunnel import refused_upgrade
from sidecar.vocab.endpoint import Endpoint


class ToLocalApp(Filter):
    """Names the local app as the upstream and its address as the endpoint; refuses a
    protocol switch its policy does not allow (`upstreams.<service>.upgrades`)."""

    __slots__ = ("_endpoint", "_name", "_upgrades_for")

    def __init__(
        self, name: str, endpoint: Endpoint, upgrades_for: Callable[[str], Iterable[str]]
    ) -> None:
        self._name = name
        self._endpoint = endpoint
        self._upgrades_for = upgrades_for

    def on_request(self, x: Exchange) -> Response | None:
        request = x.request
        request.upstream = self._name
        if request.upgrade:
            refused = refused_upgrade(request.upgrade, self._upgrades_for(self._name), self._name)
            if refused is not None:
                raise refused
        request.endpoint = self._endpoint
        return None

    def on_response(self, x: Exchange, response: Response) -> Response:
        return response

    def on_error(self, x: Exchange, exc: BaseException) -> Response | None:
        return None
