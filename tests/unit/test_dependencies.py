"""Every runtime dependency in pyproject.toml is imported by the installed packages (sidecar,
demo_services); test-only packages belong in the `dev` extra."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# distribution → the module the runtime imports from it (a new dependency needs a line here)
IMPORTED_AS = {
    "aiohttp": "aiohttp",
    "uvloop": "uvloop",
    "httptools": "httptools",
    "opentelemetry-sdk": "opentelemetry.sdk",
    "opentelemetry-exporter-otlp": "opentelemetry.exporter.otlp",
    "prometheus-client": "prometheus_client",
    "pydantic": "pydantic",
    "PyYAML": "yaml",
    "rich": "rich",
    "h2": "h2",
    "mypy-extensions": "mypy_extensions",
}


def runtime_imports() -> set[str]:
    found: set[str] = set()
    for package in ("sidecar", "demo_services"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module)
    return found


def test_every_runtime_dependency_is_imported_by_the_runtime() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert names == set(IMPORTED_AS), "add the new dependency's import name to IMPORTED_AS"
    imports = runtime_imports()
    unused = [
        dist
        for dist, module in IMPORTED_AS.items()
        if not any(m == module or m.startswith(module + ".") for m in imports)
    ]
    assert unused == [], f"runtime dependencies nothing imports (move them to `dev`): {unused}"
