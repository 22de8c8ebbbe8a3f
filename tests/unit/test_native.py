"""The compiled data path (setup.py, native-modules.txt, sidecar/native.py): `make` builds it,
the sidecar runs it, and a build older than its sources is never what runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar
from sidecar import native

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sidecar"
REQUIRED = os.environ.get("SIDECAR_REQUIRE_ALL") == "1"


def listed_modules() -> list[str]:
    text = (ROOT / "native-modules.txt").read_text()
    paths = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def built() -> bool:
    return bool(native.compiled_modules(PACKAGE))


def needs_build() -> None:
    if not built():
        if REQUIRED:
            pytest.fail("no native build: `make native` (scripts/build-native.sh) must build it")
        pytest.skip("no native build in this tree (`make native` builds it)")


def probe(
    cwd: Path, env_extra: dict[str, str], modules: list[str]
) -> subprocess.CompletedProcess[str]:
    code = (
        "import importlib, sidecar\n"
        f"for name in {modules!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
        "print(sidecar.BUILD)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_PURE_PYTHON"}
    env.update(env_extra, PYTHONPATH=str(cwd))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_every_listed_module_exists_and_is_compiled_in_this_process() -> None:
    modules = listed_modules()
    for name in modules:
        assert (ROOT / (name.replace(".", "/") + ".py")).exists(), name
    needs_build()
    if sidecar.BUILD != native.COMPILED:
        pytest.fail(f"the tests are not running the compiled data path: {sidecar.BUILD}")
    compiled = native.compiled_modules(PACKAGE)
    assert sorted(compiled) == sorted(modules)
    for name in modules:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        assert not module.__file__.endswith(".py"), f"{name} runs from source"  # type: ignore[union-attr]


def test_a_build_older_than_its_sources_is_not_used(tmp_path: Path) -> None:
    """After an edit (or a git checkout) without `make`, every compiled module loads from
    its source, with a warning, and the sidecar still starts."""
    needs_build()
    tree = tmp_path / "tree"
    shutil.copytree(PACKAGE, tree / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    edited = tree / "sidecar" / "transport" / "client.py"
    ext = next(p for p in edited.parent.glob("client.*.so"))
    os.utime(edited, (ext.stat().st_mtime + 10, ext.stat().st_mtime + 10))
    names = ["sidecar.transport.client", "sidecar.http", "sidecar.app"]
    proc = probe(tree, {}, names)
    assert proc.returncode == 0, proc.stderr
    *files, mode = proc.stdout.split("\n")[:-1]
    assert all(f.endswith(".py") for f in files), files
    assert mode == native.STALE
    assert "older than the sources" in proc.stderr


def test_sidecar_pure_python_forces_the_sources() -> None:
    needs_build()
    proc = probe(ROOT, {"SIDECAR_PURE_PYTHON": "1"}, ["sidecar.transport.server"])
    assert proc.returncode == 0, proc.stderr
    path, mode = proc.stdout.split("\n")[:2]
    assert path.endswith("server.py") and mode == native.FORCED
    proc = probe(ROOT, {}, ["sidecar.transport.server"])
    path, mode = proc.stdout.split("\n")[:2]
    assert not path.endswith(".py") and mode == native.COMPILED


def test_version_says_which_build_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == f"data path: {sidecar.BUILD}"
