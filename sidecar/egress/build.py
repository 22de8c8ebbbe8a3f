"""Egress as one unit: the policy and the three parts that consult it (the dialer, the source
of egress names for discovery, the CONNECT handler), built once by the composition root and
given a new policy on reload. It is built even when the `egress` section is absent (with a
policy that allows nothing), so a reload can turn egress on or off."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.config import EgressConfig
from sidecar.egress.connect import ConnectHandler, ConnectObserver
from sidecar.egress.dialer import EgressDialer
from sidecar.egress.discovery import EgressResolver
from sidecar.egress.dns import DnsCache
from sidecar.egress.policy import EgressPolicy


def policy_of(config: EgressConfig | None) -> EgressPolicy:
    """The policy of the `egress` section; absent, one that allows nothing."""
    return EgressPolicy(config if config is not None else EgressConfig())


class Egress:
    def __init__(
        self,
        config: EgressConfig | None,
        dns: DnsCache,
        port_for: Callable[[str], int],
        timeouts_for: Callable[[str], tuple[float, float]],  # (connect, stream_idle)
        observer: ConnectObserver | None = None,
    ) -> None:
        self.policy = policy_of(config)
        # CONNECT is answered 405 (not 403) while the section is absent.
        self.enabled = config is not None
        self.dialer = EgressDialer(self.policy, dns)
        self.resolver = EgressResolver(self.policy, port_for)
        self.connect = ConnectHandler(self.policy, self.dialer, timeouts_for, observer)

    def reload(self, config: EgressConfig | None) -> list[str]:
        """Take the policy of `config` for what comes next (a request already connected keeps
        its connection; one still connecting is checked against the new ranges). Returns the
        names the egress source published that are no longer allowed: the caller withdraws
        them from discovery, so they are unknown names again."""
        self.policy = policy_of(config)
        self.enabled = config is not None
        self.dialer.policy = self.policy
        self.connect.policy = self.policy
        return self.resolver.replace(self.policy)
