"""The config example of DESIGN §3 loads as written: YAML 1.2 booleans, so `on:` stays a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config

# Verbatim from DESIGN §3 (the contract users copy from).
DESIGN_EXAMPLE = """\
service: {name: bff, address: 127.0.0.1, port: 8000, health_path: /healthz, tags: [], meta: {}}
listeners:
  inbound:  0.0.0.0:15000     # clients → sidecar → local app
  outbound: 127.0.0.1:15001   # local app → sidecar → upstreams (Host/absolute-URI routing)
  admin:    0.0.0.0:15090
discovery:
  static: {user-service: ["127.0.0.1:8001", "127.0.0.1:8011"]}
  file: {path: endpoints.yaml}   # same shape as `static`, re-read when it changes
  consul: {address: http://127.0.0.1:8500, token: "", datacenter: null, register: true,
           deregister_critical_after: 1m, wait: 55s, stale_after: 5m}
upstreams:
  default: &defaults
    load_balancer: ewma            # round_robin | random | least_request | ewma
    timeouts: {connect: 1s, per_try: 3s, total: 10s, idle: 60s}
    retries: {attempts: 2, on: [connect_failure, reset, 502, 503], budget_ratio: 0.2,
              min_retries_per_s: 10, backoff_base: 25ms, backoff_max: 250ms}
    circuit_breaker: {failure_ratio: 0.5, minimum_requests: 20, window: 10s,
                      consecutive_failures: 5, reset_timeout: 30s, half_open_requests: 1}
    outlier_detection: {consecutive_5xx: 5, base_ejection: 30s, max_ejection_percent: 50}
    max_concurrent_requests: 1024
    fallback:                      # answer instead of an error when the upstream can't
      on: [circuit_open, no_healthy_endpoints]
      static: null                 # e.g. {status: 200, headers: {...}, body: '{"items": []}'}
      last_good: {enabled: false, max_entries: 1000, max_bytes: 8MiB, max_age: 5m}  # GET only
  document-service: {<<: *defaults, timeouts: {per_try: 1s}}
  # optional fixed local port per upstream, Consul Connect style:
  user-service: {listen: 127.0.0.1:19001}
tracing: {exporter: otlp_grpc, endpoint: http://127.0.0.1:4317, sampler: parentbased_traceidratio,
          ratio: 1.0, propagators: [tracecontext, baggage, b3multi], buffer_spans: 10000}
metrics: {enabled: true, route_templates: ["/users/{id}", "/documents/{id}"]}
logging: {level: info, access_log: false, format: json}   # access log off by default, as in Envoy/Linkerd
admin: {expose_debug: false}
limits: {max_connections: 10000, max_header_bytes: 16384, max_body_bytes: null,
         header_read_timeout: 10s, drain_timeout: 15s, retry_buffer_bytes: 65536}
"""


def test_design_example_loads_with_on_keys_intact(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(DESIGN_EXAMPLE)
    cfg = load_config(path, env={})
    default = cfg.policy("default")
    assert [str(c) for c in default.retries.on] == ["connect_failure", "reset", "502", "503"]
    assert list(default.fallback.on) == ["circuit_open", "no_healthy_endpoints"]
    assert cfg.policy("document-service").timeouts.per_try == 1.0
    assert cfg.upstreams["user-service"].listen == "127.0.0.1:19001"


@pytest.mark.parametrize("word", ["yes", "no", "off", "on", "y", "n"])
def test_yaml_11_boolean_words_are_strings(tmp_path: Path, word: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"service: {{name: bff, tags: [{word}]}}\n")
    assert load_config(path, env={}).service.tags == [word]


def test_true_and_false_are_still_booleans(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "service: {name: bff}\nlogging: {access_log: true}\nadmin: {expose_debug: False}\n"
    )
    cfg = load_config(path, env={})
    assert cfg.logging.access_log is True and cfg.admin.expose_debug is False
