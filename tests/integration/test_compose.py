"""The container image and the compose stack, checked with real tools (no Docker engine exists
on the machines this runs on): `scripts/compose.sh config` (what `make compose-up` runs, with
`docker compose` or `docker-compose`) validates the compose file, `promtool`
the Prometheus config, `sidecar check-config` every sidecar config; the image's entrypoint,
default config, env overrides, HEALTHCHECK command and SIGTERM handling run for real outside
a container."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import load_config
from tests.conftest import free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
SIDECAR_CONFIGS = sorted((COMPOSE / "sidecar").glob("*.yaml"))
IMAGE_DEFAULT = COMPOSE / "sidecar" / "image-default.yaml"
DEMO_APPS = {"bff", "user-service", "document-service", "retrieval-service"}


COMPOSE_SH = ROOT / "scripts" / "compose.sh"


def _compose_v2_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as Compose itself resolves it (anchors, merges, paths), run through
    the same script as `make compose-up`."""
    if not _compose_v2_available():
        require_binary("docker-compose")  # what `make test` installs
    proc = subprocess.run(
        [str(COMPOSE_SH), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = yaml.safe_load(proc.stdout)
    return data


def test_make_compose_targets_run_the_compose_script() -> None:
    for target in ("compose-up", "compose-down"):
        proc = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        (command,) = [line for line in proc.stdout.splitlines() if "compose" in line]
        assert command.startswith("scripts/compose.sh -f compose/docker-compose.yml "), command


def _fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("installed", "runs"),
    [
        ({"docker": "v2", "docker-compose": "v1"}, "docker compose"),
        ({"docker": "no plugin", "docker-compose": "v1"}, "docker-compose"),
        ({"docker-compose": "v1"}, "docker-compose"),
        ({}, None),
    ],
    ids=["v2-plugin", "docker-without-plugin", "v1-only", "none"],
)
def test_compose_script_uses_whichever_compose_is_installed(
    tmp_path: Path, installed: dict[str, str], runs: str | None
) -> None:
    """`docker compose` when the v2 plugin answers, else `docker-compose`, else a message
    naming both (the docker CLI without the plugin says "unknown shorthand flag: 'f'")."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if installed.get("docker") == "v2":
        _fake(bin_dir, "docker", 'echo "docker $*"\n')
    elif "docker" in installed:
        _fake(bin_dir, "docker", 'echo "docker: unknown command: docker $1" >&2; exit 1\n')
    if "docker-compose" in installed:
        _fake(bin_dir, "docker-compose", 'echo "docker-compose $*"\n')
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run(
        [bash, str(COMPOSE_SH), "-f", "compose/docker-compose.yml", "ps"],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if runs is None:
        assert proc.returncode == 127
        assert "neither 'docker compose'" in proc.stderr and "docker-compose" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{runs} -f compose/docker-compose.yml ps"


def test_compose_script_runs_the_command_compose_names(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "docker", 'echo "docker $*"\n')
    _fake(bin_dir, "docker-compose", 'echo "docker-compose $*"\n')
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run(
        [bash, str(COMPOSE_SH), "version"],
        env={"PATH": str(bin_dir), "COMPOSE": "docker-compose"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "docker-compose version"), proc.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    out = []
    for line in logical.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# ---------------------------------------------------------------- compose file


def test_compose_file_is_valid(resolved: dict[str, Any]) -> None:
    assert {"consul", "jaeger", "prometheus", "grafana", "load"} <= set(resolved["services"])
    assert set(resolved["services"]) >= DEMO_APPS


def test_every_demo_service_has_its_own_sidecar_in_its_network_namespace(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    for app in DEMO_APPS:
        sidecar = services[f"{app}-sidecar"]
        assert sidecar["network_mode"] == f"service:{app}"
        mounts = [str(v) for v in sidecar["volumes"]]
        assert any(
            m.endswith(f"compose/sidecar/{app}.yaml:/etc/sidecar/sidecar.yaml:ro") for m in mounts
        ), mounts
        # same image as the app (one image for sidecar, demo apps and load generator)
        assert sidecar["image"] == services[app]["image"]
        assert services[app]["command"][0] == "demo_services." + app.replace("-service", "_service")
        assert "entrypoint" not in sidecar  # the image's exec-form `sidecar run -c ...`


def test_image_tags_are_pinned(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    (base,) = [a for i, a in dockerfile_instructions() if i == "ARG" and "PYTHON_IMAGE" in a]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", base), base


def test_prometheus_scrapes_every_sidecars_admin_port(resolved: dict[str, Any]) -> None:
    promtool = require_binary("promtool")
    config_path = COMPOSE / "prometheus" / "prometheus.yml"
    proc = subprocess.run(
        [promtool, "check", "config", str(config_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(config_path.read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    sidecars = {n.removesuffix("-sidecar") for n in resolved["services"] if n.endswith("-sidecar")}
    admin_ports = {
        load_config(COMPOSE / "sidecar" / f"{s}.yaml", env={}).listeners.admin for s in sidecars
    }
    assert admin_ports == {"0.0.0.0:15090"}
    assert targets == {f"{s}:15090" for s in sidecars}
    args = resolved["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in args


def test_grafana_mounts_provisioning_and_dashboards(resolved: dict[str, Any]) -> None:
    mounts = [str(v) for v in resolved["services"]["grafana"]["volumes"]]
    for suffix in (
        "compose/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro",
        "compose/grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro",
        "/dashboards:/var/lib/grafana/dashboards:ro",
    ):
        assert any(m.endswith(suffix) for m in mounts), (suffix, mounts)
    datasources = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )["datasources"]
    urls = {d["type"]: d["url"] for d in datasources}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}


def test_bff_calls_upstreams_through_its_sidecar(resolved: dict[str, Any]) -> None:
    env = resolved["services"]["bff"]["environment"]
    bff = load_config(COMPOSE / "sidecar" / "bff.yaml", env={})
    assert env["SIDECAR_OUTBOUND"] == f"http://{bff.listeners.outbound}"
    assert {"user-service", "document-service", "retrieval-service"} <= bff.configured_upstreams()
    load = resolved["services"]["load"]["environment"]
    assert load["LOAD_TARGET"] == "http://bff:" + bff.listeners.inbound.rpartition(":")[2]


# ---------------------------------------------------------------- sidecar configs


@pytest.mark.parametrize("path", SIDECAR_CONFIGS, ids=[p.name for p in SIDECAR_CONFIGS])
def test_sidecar_config_passes_check_config(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIDECAR_", "OTEL_", "CONSUL_"))
        },
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("app", sorted(DEMO_APPS), ids=sorted(DEMO_APPS))
def test_demo_sidecar_registers_in_consul_and_traces_to_jaeger(app: str) -> None:
    config = load_config(COMPOSE / "sidecar" / f"{app}.yaml", env={})
    assert config.service.name == app
    # the app shares the sidecar's network namespace and listens on loopback only
    assert config.service.address == "127.0.0.1"
    assert config.discovery.consul is not None
    assert config.discovery.consul.address == "http://consul:8500"
    assert config.discovery.consul.register_service
    # a wildcard inbound host: registration advertises the container's own address
    assert config.listeners.inbound == "0.0.0.0:15000"
    assert (config.tracing.exporter, config.tracing.endpoint) == ("otlp_grpc", "http://jaeger:4317")


# ---------------------------------------------------------------- the image


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms  # multi-stage
    assert any(i == "COPY" and a.startswith("--from=build /opt/sidecar") for i, a in ins)
    assert exec_form(dict(ins)["ENTRYPOINT"]) == ["sidecar"]
    assert exec_form(dict(ins)["CMD"]) == ["run", "-c", "/etc/sidecar/sidecar.yaml"]
    user = dict(ins)["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert dict(ins)["STOPSIGNAL"] == "SIGTERM"


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """The subset of .dockerignore semantics our file uses: `**/name` anywhere, else a path
    (glob) and everything under it. No `!` exceptions (asserted)."""
    for pat in patterns:
        assert not pat.startswith("!"), "exceptions are not supported by this check"
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(part, pat[3:]) for part in rel.split("/")):
                return True
        elif fnmatch.fnmatch(rel, pat) or any(
            fnmatch.fnmatch("/".join(rel.split("/")[:n]), pat) for n in range(1, rel.count("/") + 1)
        ):
            return True
    return False


def test_build_context_holds_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """Apply .dockerignore to the repository, then check every COPY source exists in what is
    left and the packages import from it alone."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    ctx = tmp_path / "context"
    kept = [rel for rel in tracked if not dockerignored(rel, patterns) and (ROOT / rel).exists()]
    for rel in kept:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ctx / rel)
    assert not any(rel.startswith(("tests/", "bench/", "docs/")) for rel in kept)
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for src in sources:
                assert (ctx / src).exists(), f"COPY {src}: excluded by .dockerignore or missing"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sidecar, sidecar.cli, sidecar.app, demo_services.bff, "
            "demo_services.user_service, demo_services.document_service, "
            "demo_services.retrieval_service; print(sidecar.__file__)",
        ],
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(ctx))


def healthcheck_command() -> list[str]:
    args = dict(dockerfile_instructions())["HEALTHCHECK"]
    cmd = args[args.index("CMD ") + 4 :]
    argv = exec_form(cmd)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def run_healthcheck(url: str) -> int:
    env = {**os.environ, "SIDECAR_HEALTHCHECK_URL": url}
    return subprocess.run(
        healthcheck_command(), env=env, capture_output=True, timeout=30
    ).returncode


def test_image_default_config_runs_with_env_overrides_and_stops_on_sigterm() -> None:
    """What `docker run sidecar` does: the entrypoint + CMD on the baked-in config, every
    setting from env; the HEALTHCHECK passes; SIGTERM ends it with exit 0."""
    ports = {name: free_port() for name in ("inbound", "outbound", "admin")}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "OTEL_", "CONSUL_"))
    }
    env.update(
        {
            "SIDECAR_SERVICE__NAME": "orders",
            "SIDECAR_SERVICE__PORT": str(free_port()),
            "SIDECAR_LIMITS__DRAIN_TIMEOUT": "1s",
            "OTEL_TRACES_EXPORTER": "none",
            **{f"SIDECAR_LISTENERS__{k.upper()}": f"127.0.0.1:{p}" for k, p in ports.items()},
        }
    )
    (entrypoint,) = exec_form(dict(dockerfile_instructions())["ENTRYPOINT"])
    cmd = exec_form(dict(dockerfile_instructions())["CMD"])
    assert cmd[-1] == "/etc/sidecar/sidecar.yaml"
    argv = [sys.executable, "-m", f"{entrypoint}.cli", *cmd[:-1], str(IMAGE_DEFAULT)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    admin = f"http://127.0.0.1:{ports['admin']}"
    try:
        deadline = time.monotonic() + 30
        while run_healthcheck(f"{admin}/healthz") != 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "sidecar never became healthy"
            time.sleep(0.2)
        with urllib.request.urlopen(f"{admin}/admin/config", timeout=5) as resp:
            effective = json.load(resp)
        assert effective["service"]["name"] == "orders"
        assert effective["listeners"]["inbound"] == f"127.0.0.1:{ports['inbound']}"
        assert effective["tracing"]["exporter"] == "none"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    # and the same check fails once nothing answers
    assert run_healthcheck(f"{admin}/healthz") != 0


def test_k8s_example_config_is_valid(tmp_path: Path) -> None:
    configmap, pod = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "pod.yaml").read_text())
    path = tmp_path / "sidecar.yaml"
    path.write_text(configmap["data"]["sidecar.yaml"])
    config = load_config(path, env={})
    (sidecar,) = [c for c in pod["spec"]["containers"] if c["name"] == "sidecar"]
    assert sidecar["args"] == exec_form(dict(dockerfile_instructions())["CMD"])
    assert sidecar["securityContext"]["runAsUser"] == int(
        dict(dockerfile_instructions())["USER"].split(":")[0]
    )
    assert config.listeners.admin.endswith(":15090")
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "15090"
