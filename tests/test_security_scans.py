"""Static security checks that run with the test suite."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import BIN

ROOT = Path(__file__).resolve().parent.parent


def test_bandit_finds_nothing_in_the_server() -> None:
    """bandit over src/ with the reviewed skips in pyproject.toml ([tool.bandit])."""
    result = subprocess.run(
        [
            str(BIN / "bandit"),
            "-c",
            str(ROOT / "pyproject.toml"),
            "-r",
            str(ROOT / "src" / "observatory"),
            "-q",
            "-f",
            "custom",
            "--msg-template",
            "{relpath}:{line} {test_id} {msg}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secrets_in_the_repository() -> None:
    """No private keys or provider keys are committed (generated ones live in git-ignored dirs)."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    import re

    from observatory.ingest.redact import DETECTORS

    patterns = [re.compile(DETECTORS[name][0]) for name in ("private_key", "api_key")]
    offenders = []
    for name in tracked.stdout.splitlines():
        path = ROOT / name
        if (
            not path.is_file()
            or path.suffix in {".png", ".jpg", ".ico", ".woff2"}
            or name.startswith("tests/")
        ):
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for pattern in patterns:
            if pattern.search(text):
                offenders.append(name)
    assert offenders == []
