"""Configuration: pydantic models (README's configuration reference), YAML loading, env
overrides, validation errors.

Loading order: YAML file < standard variables (CONSUL_HTTP_*, OTEL_*) < SIDECAR_<SECTION>__<KEY>.
Per-upstream policies are deep-merged over `upstreams.default` before validation, so error
paths name the key the user wrote (`upstreams.document-service.timeouts.per_try`)."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sidecar.vocab.addresses import is_literal_ip
from sidecar.vocab.endpoint import parse_endpoint_address
from sidecar.vocab.names import BalancerName, PropagatorName, SamplerName

# ---------------------------------------------------------------- scalar parsing

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_duration(value: Any) -> float:
    """`250ms`, `3s`, `1m`, `1h`, or a bare number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 3s or 1m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r}: expected a number with unit ms, s, m or h")


def parse_size(value: Any) -> int:
    """`64KiB`, `8MiB`, or a bare number of bytes → bytes (int)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 64KiB or 8MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"invalid size {value!r}: expected bytes or a number with unit KiB, MiB, GiB")


def parse_host_port(value: Any) -> str:
    """`host:port` (IPv6 as `[::1]:port`); normalised to text."""
    if not isinstance(value, str):
        raise ValueError("expected host:port")
    _reject_url(value, "host:port")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {value!r}: expected host:port with port 0-65535")
    _check_host(host, value)
    return value


# ---------------------------------------------------------------- shapes that fail at run time
# (a URL where host:port is expected resolves "https" as a host name; port 0 can't be dialled)

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def _reject_url(value: str, expected: str) -> None:
    if "://" in value:
        bare = value.split("://", 1)[1].split("/", 1)[0]
        raise ValueError(
            f"invalid address {value!r}: expected {expected} without a scheme, e.g. {bare!r}"
        )


def _check_host(host: str, value: str) -> None:
    if not (_HOSTNAME_RE.match(host) or is_literal_ip(host)):
        raise ValueError(f"invalid address {value!r}: {host!r} is not a host name or IP address")


def parse_host(value: Any) -> str:
    """A host name or IP address (no port, no scheme)."""
    if not isinstance(value, str):
        raise ValueError("expected a host name or IP address")
    _reject_url(value, "a host name or IP address")
    _check_host(value, value)
    return value


def parse_otlp_endpoint(value: Any) -> str:
    """`http(s)://host:port[/path]` or `host:port`, as the OTLP exporters take them."""
    if not isinstance(value, str):
        raise ValueError("expected http(s)://host:port")
    m = re.match(r"^(https?)://([^/\s]+)(/\S*)?$", value)
    if m is None and "://" in value:
        raise ValueError(f"invalid OTLP endpoint {value!r}: expected http(s)://host:port")
    authority = m.group(2) if m else value
    try:
        parse_host_port(authority)
    except ValueError:
        raise ValueError(f"invalid OTLP endpoint {value!r}: expected http(s)://host:port") from None
    return value


def _endpoint_address(value: Any) -> str:
    """An endpoint of static/file discovery: `host:port` that can be dialled, or
    `https://host[:port]` (TLS to that endpoint); anything else names what to write."""
    if not isinstance(value, str):
        raise ValueError("expected host:port or https://host:port")
    if "://" not in value:
        address = parse_host_port(value)
        if address.rpartition(":")[2].lstrip("0") == "":
            raise ValueError(f"invalid address {address!r}: port 0 cannot be connected to")
    endpoint = parse_endpoint_address(value)  # the scheme and URL shape, with the reason
    _check_host(endpoint.host, value)
    return value


def parse_cidr(value: Any) -> str:
    """An address block (`10.0.0.0/8`, `fd00::/8`) or one address; normalised to text."""
    if not isinstance(value, str):
        raise ValueError("expected a CIDR such as 10.0.0.0/8")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR {value!r}: expected e.g. 10.0.0.0/8 or fd00::/8") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
HostPort = Annotated[str, BeforeValidator(parse_host_port)]
EndpointAddress = Annotated[str, BeforeValidator(_endpoint_address)]
Host = Annotated[str, BeforeValidator(parse_host)]
OtlpEndpoint = Annotated[str, BeforeValidator(parse_otlp_endpoint)]
Cidr = Annotated[str, BeforeValidator(parse_cidr)]


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- sections

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ServiceConfig(StrictModel):
    name: str = Field(pattern=_NAME_RE)
    address: Host = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    health_path: str = Field(default="/healthz", pattern=r"^/")
    tags: list[str] = []
    meta: dict[str, str] = {}


class ListenersConfig(StrictModel):
    inbound: HostPort = "0.0.0.0:15000"
    outbound: HostPort = "127.0.0.1:15001"
    admin: HostPort = "0.0.0.0:15090"
    # Per-listener connection budgets; unset: `limits.max_connections` (each listener has its
    # own budget either way, so inbound clients never use up the app's outbound slots).
    inbound_max_connections: int | None = Field(default=None, ge=1)
    outbound_max_connections: int | None = Field(default=None, ge=1)


class ConsulConfig(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    address: str = "http://127.0.0.1:8500"
    token: str = ""
    datacenter: str | None = None
    # `register` would shadow a BaseModel attribute; the YAML key stays `register`.
    register_service: bool = Field(default=True, alias="register")
    deregister_critical_after: Duration = 60.0
    wait: Duration = 55.0
    stale_after: Duration = 300.0

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "://" not in v:
            v = "http://" + v
        if not re.match(r"^https?://[^/\s]+/?$", v):
            raise ValueError(f"invalid Consul address {v!r}: expected http(s)://host:port")
        return v.rstrip("/")

    @field_validator("deregister_critical_after")
    @classmethod
    def _dereg(cls, v: float) -> float:
        if v < 60:
            raise ValueError("must be at least 1m (Consul's minimum)")
        return v

    @field_validator("wait")
    @classmethod
    def _wait(cls, v: float) -> float:
        if not 1 <= v <= 600:
            raise ValueError("must be between 1s and 10m (Consul's maximum)")
        return v


class FileDiscoveryConfig(StrictModel):
    path: str


class DiscoveryConfig(StrictModel):
    static: dict[str, list[EndpointAddress]] = {}
    file: FileDiscoveryConfig | None = None
    consul: ConsulConfig | None = None

    @field_validator("static")
    @classmethod
    def _names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in v:
            if not re.match(_NAME_RE, name):
                raise ValueError(f"invalid upstream name {name!r}")
        return v


class TimeoutsConfig(StrictModel):
    connect: Duration = 1.0
    per_try: Duration = 3.0
    total: Duration = 10.0
    idle: Duration = 60.0
    # An Upgrade/CONNECT tunnel closes after this long without a byte either way; the
    # request timeouts end at the 101.
    stream_idle: Duration = 3600.0


RETRY_CONDITIONS = ("connect_failure", "reset", "timeout", "5xx")
# gRPC status names `retries.on` accepts (retried only from a Trailers-Only reply).
GRPC_RETRY_CONDITIONS = (
    "cancelled",
    "deadline_exceeded",
    "internal",
    "resource_exhausted",
    "unavailable",
)


class RetriesConfig(StrictModel):
    attempts: int = Field(default=2, ge=0, le=10)  # retries after the first try
    on: list[str | int] = ["connect_failure", "reset", 502, 503]
    budget_ratio: float = Field(default=0.2, ge=0.0, le=10.0)
    min_retries_per_s: float = Field(default=10.0, ge=0.0)
    backoff_base: Duration = 0.025
    backoff_max: Duration = 0.25

    @field_validator("on")
    @classmethod
    def _on(cls, v: list[str | int]) -> list[str | int]:
        out: list[str | int] = []
        for c in v:
            if isinstance(c, str) and c.isdigit():
                c = int(c)
            if isinstance(c, int):
                if not 500 <= c <= 599:
                    raise ValueError(f"retry status {c} must be a 5xx (4xx are never retried)")
            elif c not in RETRY_CONDITIONS and c not in GRPC_RETRY_CONDITIONS:
                raise ValueError(
                    f"unknown retry condition {c!r}: expected one of "
                    f"{', '.join(RETRY_CONDITIONS + GRPC_RETRY_CONDITIONS)} or a 5xx status"
                )
            out.append(c)
        return out


class CircuitBreakerConfig(StrictModel):
    enabled: bool = True
    failure_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    minimum_requests: int = Field(default=20, ge=1)
    window: Duration = 10.0
    consecutive_failures: int = Field(default=5, ge=0)  # 0 disables the consecutive trigger
    reset_timeout: Duration = 30.0
    half_open_requests: int = Field(default=1, ge=1)


class OutlierDetectionConfig(StrictModel):
    enabled: bool = True
    consecutive_5xx: int = Field(default=5, ge=1)
    # Envoy's names. Local origin: no HTTP answer (connect failure, reset, timeout); gateway:
    # local origin or 502/503/504. 0 turns a counter off.
    consecutive_local_origin_failure: int = Field(default=3, ge=0)
    consecutive_gateway_failure: int = Field(default=0, ge=0)
    base_ejection: Duration = 30.0
    max_ejection_percent: int = Field(default=50, ge=0, le=100)


class HealthCheckConfig(StrictModel):
    path: str = Field(default="/healthz", pattern=r"^/[!-~]*$")
    interval: Duration = 5.0
    timeout: Duration = 1.0
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than 0")
        return v


class StaticFallbackConfig(StrictModel):
    status: int = Field(default=200, ge=200, le=599)
    headers: dict[str, str] = {}
    body: str = ""


class LastGoodConfig(StrictModel):
    enabled: bool = False
    max_entries: int = Field(default=1000, ge=1)
    max_bytes: Size = 8 * 1024 * 1024
    max_age: Duration = 300.0


class FallbackConfig(StrictModel):
    on: list[Literal["circuit_open", "no_healthy_endpoints"]] = [
        "circuit_open",
        "no_healthy_endpoints",
    ]
    static: StaticFallbackConfig | None = None
    last_good: LastGoodConfig = LastGoodConfig()


ALPN_PROTOCOLS = ("http/1.1", "h2")


class TlsConfig(StrictModel):
    """TLS the sidecar originates to an upstream's endpoints."""

    enabled: bool = True
    sni: str | None = None  # default: the endpoint's host name, else the upstream name
    ca_file: str | None = None  # default: the system's trust store
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    alpn: list[str] = []

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file {v!r} not found")
        return v

    @field_validator("alpn")
    @classmethod
    def _alpn(cls, v: list[str]) -> list[str]:
        for proto in v:
            if proto not in ALPN_PROTOCOLS:
                raise ValueError(f"unknown ALPN protocol {proto!r}: expected http/1.1 or h2")
        return v

    @model_validator(mode="after")
    def _usable(self) -> TlsConfig:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        # Load the files once here, so check-config reports a bad PEM, not the first request.
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_file {self.ca_file!r} is not a usable CA bundle: {exc}") from None
        if self.client_cert is not None:
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"client_cert/client_key not usable: {exc}") from None
        return self


class UpstreamConfig(StrictModel):
    load_balancer: BalancerName = "ewma"
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retries: RetriesConfig = RetriesConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()
    max_concurrent_requests: int = Field(default=1024, ge=1)
    fallback: FallbackConfig = FallbackConfig()
    listen: HostPort | None = None
    upgrades: list[str] = ["websocket"]
    tls: TlsConfig | None = None

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_shorthand(cls, v: Any) -> Any:
        # `tls: true` is the common case: system trust, verification, SNI.
        if isinstance(v, bool):
            return {"enabled": v}
        return v

    @field_validator("upgrades")
    @classmethod
    def _upgrades(cls, v: list[str]) -> list[str]:
        out = []
        for token in v:
            name = token.strip().lower()
            if name == "h2c":
                raise ValueError(
                    "h2c cannot be tunnelled: HTTP/2 cleartext is spoken with prior knowledge"
                )
            if not re.match(r"^[a-z0-9!#$%&'*+.^_`|~-]+(/[a-z0-9!#$%&'*+.^_`|~-]+)?$", name):
                raise ValueError(f"invalid upgrade token {token!r}")
            out.append(name)
        return out

    health_check: HealthCheckConfig | None = None
    # http1 | h2c | auto: auto speaks h2c to the upstream for gRPC requests and HTTP/2 callers.
    # h2: HTTP/2 always, cleartext or over TLS as the endpoint says (h2c is the same, kept).
    protocol: Literal["http1", "h2c", "auto", "h2"] = "auto"


class TracingConfig(StrictModel):
    exporter: Literal["otlp_grpc", "otlp_http", "none"] = "otlp_grpc"
    endpoint: OtlpEndpoint = "http://127.0.0.1:4317"
    sampler: SamplerName = "parentbased_traceidratio"
    ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    propagators: list[PropagatorName] = [
        "tracecontext",
        "baggage",
        "b3multi",
    ]
    buffer_spans: int = Field(default=10000, ge=0, le=1_000_000)


class MetricsConfig(StrictModel):
    enabled: bool = True
    route_templates: list[str] = []

    @field_validator("route_templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t.startswith("/"):
                raise ValueError(f"route template {t!r} must start with /")
        if len(v) > 1000:
            raise ValueError("at most 1000 route templates")
        return v


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    format: Literal["json", "text"] = "json"


class AdminConfig(StrictModel):
    expose_debug: bool = False


class LimitsConfig(StrictModel):
    max_connections: int = Field(default=10000, ge=1)
    max_header_bytes: Size = 16384
    max_body_bytes: Size | None = None
    header_read_timeout: Duration = 10.0
    drain_timeout: Duration = 15.0
    retry_buffer_bytes: Size = 65536
    h2_max_concurrent_streams: int = Field(default=100, ge=1, le=2**31 - 1)


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_EGRESS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class EgressConfig(StrictModel):
    """External hosts reachable through the outbound listener (off when absent)."""

    allow: list[str] = []  # exact names or *.suffix
    allow_private: list[str] = []  # CIDRs a resolved address may be in
    connect_ports: list[int] = [443]

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            name = entry.strip().lower().rstrip(".")
            if is_literal_ip(name):
                raise ValueError(f"{entry!r} is an address: egress.allow takes host names")
            if not _EGRESS_NAME.match(name) or "." not in name.removeprefix("*."):
                raise ValueError(
                    f"invalid egress name {entry!r}: expected a host name like "
                    "api.example.com or *.example.com"
                )
            out.append(name)
        return out

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"invalid CIDR {cidr!r}, expected e.g. 10.0.0.0/8") from None
        return v

    @field_validator("connect_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for port in v:
            if not 0 < port < 65536:
                raise ValueError(f"invalid port {port}: expected 1-65535")
        return v


class Config(StrictModel):
    service: ServiceConfig
    listeners: ListenersConfig = ListenersConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    upstreams: dict[str, UpstreamConfig] = {}
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()
    egress: EgressConfig | None = None
    # Clients whose X-Forwarded-*/Forwarded headers are kept; everyone else's are overwritten.
    trusted_proxies: list[Cidr] = []

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, v: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in v:
            if not re.match(_NAME_RE, name):
                raise ValueError(f"invalid upstream name {name!r}")
        return v

    def listen_addresses(self) -> dict[str, str]:
        out = {
            "listeners.inbound": self.listeners.inbound,
            "listeners.outbound": self.listeners.outbound,
            "listeners.admin": self.listeners.admin,
        }
        for name, up in self.upstreams.items():
            if up.listen:
                out[f"upstreams.{name}.listen"] = up.listen
        return out

    def policy(self, upstream: str) -> UpstreamConfig:
        """The effective policy of an upstream: its own entry (already merged over `default`
        at load time) or `default`."""
        return self.upstreams.get(upstream) or self.upstreams.get("default") or UpstreamConfig()

    def configured_upstreams(self) -> set[str]:
        """Upstream names the config itself makes routable."""
        return set(self.discovery.static) | {n for n in self.upstreams if n != "default"}


# ---------------------------------------------------------------- cross-field checks


def cross_field_problems(config: Config) -> list[str]:
    """What single fields can't show: ports two listeners would both bind, and an inbound
    listener that would forward to itself. Every problem, as `field.path: reason`."""
    return [*_port_collisions(config), *_inbound_loops(config)]


def _port_collisions(config: Config) -> list[str]:
    # By port alone: a wildcard host (0.0.0.0) takes the port on every address.
    problems = []
    seen: dict[int, str] = {}
    for where, addr in config.listen_addresses().items():
        _, port = split_host_port(addr)
        if port == 0:  # the kernel picks a free port
            continue
        if port in seen:
            problems.append(f"{where}: {seen[port]} and {where} both listen on port {port}")
        else:
            seen[port] = where
    return problems


def _inbound_loops(config: Config) -> list[str]:
    svc = config.service
    problems = []
    for where, addr in config.listen_addresses().items():
        host, port = split_host_port(addr)
        if port != svc.port:
            continue
        same_host = host in ("0.0.0.0", "::", svc.address) or (
            is_literal_ip(svc.address) and ipaddress.ip_address(svc.address).is_loopback
        )
        if same_host:
            problems.append(
                f"service.port: {svc.address}:{svc.port} is the sidecar's own {where}; the "
                f"app must listen on a port of its own"
            )
    return problems


# ---------------------------------------------------------------- loading


class ConfigError(Exception):
    """Invalid configuration; `problems` are `field.path: reason` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    cur = data
    for key in path[:-1]:
        nxt = cur.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[key] = nxt
        cur = nxt
    cur[path[-1]] = value


class _Yaml12Loader(yaml.SafeLoader):
    """Booleans as YAML 1.2 has them: only true/false. PyYAML follows YAML 1.1, where `on`,
    `off`, `yes`, `no` are booleans too — which turns our `on: [...]` keys (retries, fallback)
    into `True` and a valid config into a confusing error."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


def _env_value(text: str) -> Any:
    try:
        return parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    if env.get("CONSUL_HTTP_ADDR"):
        addr = env["CONSUL_HTTP_ADDR"]
        if "://" not in addr:
            scheme = "https" if env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") else "http"
            addr = f"{scheme}://{addr}"
        _set_path(data, ["discovery", "consul", "address"], addr)
    if env.get("CONSUL_HTTP_TOKEN"):
        _set_path(data, ["discovery", "consul", "token"], env["CONSUL_HTTP_TOKEN"])
    if env.get("OTEL_SERVICE_NAME"):
        _set_path(data, ["service", "name"], env["OTEL_SERVICE_NAME"])
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        _set_path(data, ["tracing", "endpoint"], env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if env.get("OTEL_EXPORTER_OTLP_PROTOCOL"):
        proto = env["OTEL_EXPORTER_OTLP_PROTOCOL"]
        exporter = {"grpc": "otlp_grpc", "http/protobuf": "otlp_http"}.get(proto, proto)
        _set_path(data, ["tracing", "exporter"], exporter)
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        _set_path(data, ["tracing", "exporter"], "none")
    if env.get("OTEL_TRACES_SAMPLER"):
        _set_path(data, ["tracing", "sampler"], env["OTEL_TRACES_SAMPLER"])
    if env.get("OTEL_TRACES_SAMPLER_ARG"):
        _set_path(data, ["tracing", "ratio"], _env_value(env["OTEL_TRACES_SAMPLER_ARG"]))
    if env.get("OTEL_PROPAGATORS"):
        props = [p.strip() for p in env["OTEL_PROPAGATORS"].split(",") if p.strip()]
        _set_path(data, ["tracing", "propagators"], props)
    for key in sorted(env):
        if not key.startswith("SIDECAR_") or "__" not in key:
            continue
        path = [p.lower() for p in key[len("SIDECAR_") :].split("__")]
        if any(not p for p in path):
            continue
        _set_path(data, path, _env_value(env[key]))
    return data


def _merge_upstreams(data: dict[str, Any]) -> dict[str, Any]:
    ups = data.get("upstreams")
    if not isinstance(ups, dict):
        return data
    default = ups.get("default")
    if not isinstance(default, dict):
        return data
    merged: dict[str, Any] = {}
    for name, policy in ups.items():
        if name != "default" and isinstance(policy, dict):
            merged[name] = _deep_merge(default, policy)
        elif name != "default" and policy is None:
            merged[name] = copy.deepcopy(default)
        else:
            merged[name] = policy
    return {**data, "upstreams": merged}


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            key = next((p for p in reversed(e["loc"]) if isinstance(p, str)), "value")
            msg = f"unknown {key} {e['input']!r}: expected {e['ctx']['expected']}"
        problems.append(f"{loc or '(top level)'}: {msg}")
    return problems


def build_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of sections"])
    data = apply_env(data, os.environ if env is None else env)
    data = _merge_upstreams(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
    problems = cross_field_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate a config file. Raises ConfigError with every problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"(file) {path}: {exc.strerror or exc}"]) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"(file) {path}: invalid YAML{where}: {exc}"]) from None
    return build_config(data, env)


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as JSON-able data with secrets removed (for /admin/config)."""
    data = config.model_dump(mode="json", by_alias=True)
    consul = data.get("discovery", {}).get("consul")
    if consul and consul.get("token"):
        consul["token"] = "<redacted>"
    return data
