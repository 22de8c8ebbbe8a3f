"""Self-contained HTML report (placeholder until the renderer lands)."""

from __future__ import annotations

from sidecar.diagnose.results import Diagnosis


def render(d: Diagnosis) -> str:
    return f"<!doctype html><title>{d.name}</title>"
