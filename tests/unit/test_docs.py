"""The docs say what the code does: every setting, mapping and metric is documented."""

from __future__ import annotations

from pathlib import Path

from observatory import semconv
from observatory.config import REGISTRY

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_in_configuration_md() -> None:
    text = (DOCS / "configuration.md").read_text()
    for setting in REGISTRY:
        assert f"`{setting.env}`" in text, setting.env
        if setting.default not in (None, ""):
            row = next(line for line in text.splitlines() if f"`{setting.env}`" in line)
            if setting.name != "database_url":
                assert f"`{setting.default}`" in row, (setting.env, setting.default)


def test_every_attribute_mapping_is_in_semantic_conventions_md() -> None:
    text = (DOCS / "semantic-conventions.md").read_text()
    for field, names in semconv.FIELD_TABLE:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{field}` |"))
        for name in names:
            assert f"`{name}`" in row, (field, name)
