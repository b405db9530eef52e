#!/usr/bin/env python3
"""Add a row to docs/configuration.md for every setting in config.REGISTRY that lacks one.

Run after adding a setting: `.venv/bin/python scripts/sync-config-docs.py`. Existing rows are
left as written; tests/unit/test_docs.py checks that every setting and its default appear.
"""

from __future__ import annotations

from pathlib import Path

from observatory.config import REGISTRY

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def row(setting) -> str:  # type: ignore[no-untyped-def]
    default = setting.default
    if setting.name == "database_url":
        default = "sqlite:///<data dir>/observatory.db"
    elif default is None:
        default = "(unset)"
    elif default == "":
        default = "(empty)"
    choices = f" One of: {', '.join(f'`{c}`' for c in setting.choices)}." if setting.choices else ""
    secret = "yes" if setting.secret else ""
    return f"| `{setting.env}` | `{default}` | {secret} | {setting.doc}{choices} |"


def main() -> None:
    lines = DOC.read_text().splitlines()
    last_row = max(i for i, line in enumerate(lines) if line.startswith("| `OBSERVATORY_"))
    missing = [row(s) for s in REGISTRY if f"`{s.env}`" not in DOC.read_text()]
    lines[last_row + 1 : last_row + 1] = missing
    DOC.write_text("\n".join(lines) + "\n")
    print(f"added {len(missing)} row(s)")


if __name__ == "__main__":
    main()
