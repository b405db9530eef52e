from __future__ import annotations

from pathlib import Path

import pytest

from observatory.config import ConfigError, load_settings


def test_defaults_use_embedded_sqlite_in_the_data_dir() -> None:
    settings = load_settings(env={})
    assert settings.data_dir == Path("data")
    assert settings.database_url == "sqlite:///data/observatory.db"
    assert settings.host == "127.0.0.1" and settings.port == 8000


def test_environment_file_and_override_precedence(tmp_path: Path) -> None:
    secret = tmp_path / "db_url"
    secret.write_text("postgresql://u:p@db:5432/x\n")
    env = {"OBSERVATORY_DATABASE_URL_FILE": str(secret), "OBSERVATORY_PORT": "9000"}
    settings = load_settings(env=env)
    assert settings.database_url == "postgresql://u:p@db:5432/x"
    assert settings.port == 9000
    env["OBSERVATORY_DATABASE_URL"] = "sqlite:///direct.db"
    assert load_settings(env=env).database_url == "sqlite:///direct.db"
    assert load_settings({"port": 7000}, env=env).port == 7000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OBSERVATORY_PORT": "eighty"}, "OBSERVATORY_PORT"),
        ({"OBSERVATORY_PORT": "0"}, "below the minimum"),
        ({"OBSERVATORY_ROLE": "worker"}, "OBSERVATORY_ROLE"),
        ({"OBSERVATORY_AUTO_MIGRATE": "maybe"}, "true/false"),
        ({"OBSERVATORY_DATABASE_URL": "mysql://x/y"}, "unsupported database URL"),
        ({"OBSERVATORY_DATABASE_URL": "postgresql://host:5432"}, "database name"),
        ({"OBSERVATORY_TRUSTED_PROXIES": "10.0.0.0/99"}, "OBSERVATORY_TRUSTED_PROXIES"),
        ({"OBSERVATORY_REDIS_URL_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_bad_values_fail_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({"colour": "blue"}, env={})
