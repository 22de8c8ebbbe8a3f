"""README's configuration reference is held to the config models: every key the sidecar
accepts has a row, every row is a key it accepts, each default is the model's default (parsed
the way the sidecar parses the config), durations and sizes are written with their unit, and
the YAML sketch above the table is a valid config."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sidecar.config import Config, build_config, parse_yaml

ROOT = Path(__file__).resolve().parents[3]
SECTION = "## Configuration reference"
ROW = re.compile(r"^\| `([^`]+)` \| (.+?) \| (.+) \|$")


def _model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if _model(a) is not None]
        return _model(models[0]) if models else None
    return None


def model_keys(
    model: type[BaseModel] = Config, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key as written in YAML, field) of every leaf; `<name>` for a mapping's keys."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = _model(field.annotation)
        if nested is not None:
            yield from model_keys(nested, key + ".")
            continue
        if get_origin(field.annotation) is dict:
            value_model = _model(get_args(field.annotation)[1])
            if value_model is not None:
                yield from model_keys(value_model, key + ".<name>.")
                continue
        yield key, field


def readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "key":
            assert m.group(1) not in rows, f"{m.group(1)} is in the table twice"
            rows[m.group(1)] = m.group(2).strip()
    return rows


MODEL = dict(model_keys())
ROWS = readme_rows()


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    undocumented = sorted(set(MODEL) - set(ROWS))
    assert undocumented == [], f"keys missing from README's configuration reference: {undocumented}"
    unknown = sorted(set(ROWS) - set(MODEL))
    assert unknown == [], f"README documents keys the config does not have: {unknown}"


def _kind(field: FieldInfo) -> str:
    described = repr((field.annotation, field.metadata))
    if "parse_duration" in described:
        return "duration"
    if "parse_size" in described:
        return "size"
    return ""


@pytest.mark.parametrize("key", sorted(MODEL))
def test_documented_default_is_the_models(key: str) -> None:
    field = MODEL[key]
    cell = ROWS.get(key)
    if cell is None:
        pytest.skip("undocumented: reported by the test above")
    required = field.default is PydanticUndefined and field.default_factory is None
    if required:
        assert cell == "required", f"{key} has no default; README says {cell}"
        return
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"{key}: default cell should be one `value`, got {cell}"
    written = m.group(1)
    kind = _kind(field)
    if kind == "duration" and written != "null":
        assert re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", written), f"{key}: write a unit ({written})"
    if kind == "size" and written != "null":
        assert re.fullmatch(r"\d+(B|KiB|MiB|GiB)", written), f"{key}: write a unit ({written})"
    typ: Any = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(typ)
    default = field.get_default(call_default_factory=True)
    assert adapter.validate_python(parse_yaml(written or '""')) == adapter.validate_python(
        default
    ), f"{key}: README says {written}, the default is {default!r}"


def test_the_yaml_sketch_is_a_valid_config() -> None:
    text = (ROOT / "README.md").read_text().split(SECTION, 1)[1]
    sketch = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = build_config(parse_yaml(sketch), env={})
    assert config.service.name == "bff"
