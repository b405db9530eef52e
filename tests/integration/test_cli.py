"""The `observatory` command line against both databases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import BIN


def run(
    args: list[str], data_dir: Path, database_url: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
    full_env.update(
        OBSERVATORY_DATA_DIR=str(data_dir), OBSERVATORY_DATABASE_URL=database_url, **env
    )
    return subprocess.run(
        [str(BIN / "observatory"), *args], env=full_env, capture_output=True, text=True, timeout=60
    )


def test_projects_keys_and_prices(tmp_path: Path, database_url: str) -> None:
    assert run(["migrate"], tmp_path, database_url).stdout.startswith("database at revision")
    created = run(["projects", "create", "checkout"], tmp_path, database_url)
    assert created.returncode == 0, created.stderr
    again = run(["projects", "create", "checkout"], tmp_path, database_url)
    assert again.returncode == 1 and "already exists" in again.stderr
    listing = run(["projects", "list", "--json"], tmp_path, database_url)
    assert '"name":"checkout"' in listing.stdout
    key = run(
        ["keys", "create", "--project", "checkout", "--role", "ingest", "--name", "ci"],
        tmp_path,
        database_url,
    )
    assert key.returncode == 0 and key.stdout.strip().startswith("obs_")
    assert len(key.stdout.strip().splitlines()) == 1  # only the key, ready for $(…)
    keys = run(["keys", "list", "--project", "checkout"], tmp_path, database_url)
    assert "ingest" in keys.stdout and key.stdout.strip() not in keys.stdout
    key_id = keys.stdout.strip().splitlines()[1].split()[0]
    revoked = run(["keys", "revoke", key_id], tmp_path, database_url)
    assert revoked.returncode == 0
    assert "revoked" in run(["keys", "list"], tmp_path, database_url).stdout
    missing = run(["keys", "create", "--project", "nope", "--role", "read"], tmp_path, database_url)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    price = run(
        [
            "prices",
            "set",
            "--project",
            "checkout",
            "--model",
            "m1",
            "--input",
            "1.5",
            "--output",
            "3",
        ],
        tmp_path,
        database_url,
    )
    assert price.returncode == 0, price.stderr
    assert "m1" in run(["prices", "list", "--project", "checkout"], tmp_path, database_url).stdout
    bad_price = run(
        [
            "prices",
            "set",
            "--project",
            "checkout",
            "--model",
            "m1",
            "--input",
            "x",
            "--output",
            "3",
        ],
        tmp_path,
        database_url,
    )
    assert bad_price.returncode == 2


def test_configuration_errors_exit_2_with_the_variable_named(tmp_path: Path) -> None:
    result = run(["migrate"], tmp_path, "mysql://x/y")
    assert result.returncode == 2 and "OBSERVATORY_DATABASE_URL" in result.stderr
    settings = run(["settings"], tmp_path, "sqlite:///x.db")
    assert "OBSERVATORY_REDIS_URL" in settings.stdout
