"""scripts/generate-secrets.sh and scripts/rotate-secrets.sh.

Generation: every secret the stack needs, random, URL-safe, mode 0600, never overwritten
without --force. Rotation: against a live throw-away PostgreSQL (started with
postgresql.prod.conf, roles made by the database image's init script) and Redis (started by
the Redis entrypoint with redis.prod.conf); afterwards an `observatory` process started with the
new secret files connects and sees the data written before the rotation.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
import redis

from .conftest import (
    DOCKER,
    PG_BIN,
    SCRIPTS,
    SECRET_NAMES,
    THIRD_PARTY_SECRETS,
    VENV_BIN,
    PgServer,
    as_postgres,
    docker_style_secrets,
    free_port,
    pg_initdb,
    prepare_pg_base,
    read_secret,
    redis_client,
    redis_ping,
    run,
    stop_process,
    tool,
    wait_until,
)

GENERATE = SCRIPTS / "generate-secrets.sh"
ROTATE = SCRIPTS / "rotate-secrets.sh"
ALPHANUMERIC = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def generate(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "bash",
            str(GENERATE),
            "--dir",
            str(directory),
            "--owner",
            f"{os.getuid()}:{os.getgid()}",
            *args,
        ],
        check=check,
    )


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.glob("*.txt")}


# ------------------------------------------------------------------------------------ generation


def test_every_secret_is_generated_private_and_url_safe(generated_secrets: Path) -> None:
    names = sorted(p.name for p in generated_secrets.glob("*.txt"))
    assert names == sorted(f"{n}.txt" for n in SECRET_NAMES)
    assert sorted(p.name for p in (generated_secrets / "tls").iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    assert stat.S_IMODE(generated_secrets.stat().st_mode) == 0o700
    for path in [*generated_secrets.glob("*.txt"), *(generated_secrets / "tls").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    passwords = {
        name: read_secret(generated_secrets, name)
        for name in (
            "postgres_password",
            "replication_password",
            "redis_password",
            "grafana_admin_password",
            "grafana_db_password",
            "pgbackrest_cipher_pass",
            "observatory_secret_key",
        )
    }
    app_password = urlsplit(read_secret(generated_secrets, "database_url")).password
    assert app_password
    passwords["app_db_password"] = app_password
    admin_key = read_secret(generated_secrets, "initial_admin_key")
    assert admin_key.startswith("obs_")
    passwords["initial_admin_key"] = admin_key.removeprefix("obs_")
    for name, value in passwords.items():
        assert set(value) <= ALPHANUMERIC, name
        bits = len(value) * math.log2(len(ALPHANUMERIC))
        assert bits >= 180, f"{name}: {bits:.0f} bits"
        # Not a constant or a repeated pattern: at least 20 distinct symbols.
        assert len(set(value)) >= 20, name
    assert len(set(passwords.values())) == len(passwords), "two secrets share a value"

    for name in THIRD_PARTY_SECRETS:
        assert read_secret(generated_secrets, name).startswith("CHANGE-ME")


def test_connection_urls_point_at_the_stack(generated_secrets: Path) -> None:
    db = urlsplit(read_secret(generated_secrets, "database_url"))
    assert (db.scheme, db.username, db.hostname, db.port, db.path) == (
        "postgresql",
        "observatory",
        "pgbouncer",
        6432,
        "/llm_observatory",
    )
    assert parse_qs(db.query) == {"sslmode": ["require"]}
    read = urlsplit(read_secret(generated_secrets, "database_read_url"))
    assert read.password == db.password and read.hostname == "pgbouncer"
    cache = urlsplit(read_secret(generated_secrets, "redis_url"))
    assert (cache.scheme, cache.hostname, cache.port, cache.path) == (
        "redis",
        "redis-master",
        6379,
        "/0",
    )
    assert cache.password == read_secret(generated_secrets, "redis_password")


def test_internal_tls_certificate_covers_the_database_hosts(generated_secrets: Path) -> None:
    tls = generated_secrets / "tls"
    run([tool("openssl"), "verify", "-CAfile", str(tls / "ca.crt"), str(tls / "server.crt")])
    text = run([tool("openssl"), "x509", "-in", str(tls / "server.crt"), "-noout", "-text"]).stdout
    for host in ("timescaledb-primary", "timescaledb-replica", "pgbouncer"):
        assert f"DNS:{host}" in text


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    generate(directory, "--quiet")
    before = snapshot(directory)
    again = generate(directory, check=False)
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr
    assert snapshot(directory) == before
    forced = generate(directory, "--force")
    assert forced.returncode == 0
    after = snapshot(directory)
    assert after.keys() == before.keys()
    assert after["postgres_password.txt"] != before["postgres_password.txt"]
    # --force keeps the replaced values for recovery.
    backups = list(directory.glob("backup-*"))
    assert len(backups) == 1
    assert (backups[0] / "postgres_password.txt").read_text() == before["postgres_password.txt"]


def test_profile_variants_of_the_urls(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    generate(directory, "--quiet", "--with-replica", "--redis-sentinel")
    assert urlsplit(read_secret(directory, "database_read_url")).path == "/llm_observatory_ro"
    assert read_secret(directory, "redis_url").startswith("redis+sentinel://:")
    assert read_secret(directory, "redis_url").endswith(
        "@redis-sentinel-1:26379,redis-sentinel-2:26379,redis-sentinel-3:26379/mymaster/0"
    )


def test_root_hands_the_files_to_the_container_account(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("the deployment tests run as root (CI does)")
    directory = tmp_path / "secrets"
    run(["bash", str(GENERATE), "--quiet", "--dir", str(directory)])
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in directory.rglob("*")}
    assert owners == {(10001, 10001)}


# ------------------------------------------------------------------------------------ rotation


@dataclass
class LiveStack:
    secrets: Path
    pg: PgServer
    redis_port: int
    env: dict[str, str]


def observatory(
    stack: LiveStack, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cli = VENV_BIN / "observatory"
    if not cli.exists():
        pytest.fail(f"{cli} is missing: install the project (make venv)")
    return run([str(cli), *args], env=stack.env, check=check, timeout=120)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    secrets = tmp_path_factory.mktemp("rotation") / "secrets"
    generate(secrets, "--quiet")
    base, pg_port = prepare_pg_base("postgresql.prod.conf", "obs-deploy-rotate-pg-")
    redis_port = free_port()
    # This machine's hosts and ports instead of pgbouncer:6432 and redis-master:6379.
    for name, old, new in (
        ("database_url", "@pgbouncer:6432/", f"@127.0.0.1:{pg_port}/"),
        ("database_read_url", "@pgbouncer:6432/", f"@127.0.0.1:{pg_port}/"),
        ("redis_url", "@redis-master:6379/", f"@127.0.0.1:{redis_port}/"),
    ):
        path = secrets / f"{name}.txt"
        path.write_text(path.read_text().replace(old, new))
    pg = PgServer(base, pg_port, "postgresql.prod.conf")
    redis_dir = tmp_path_factory.mktemp("rotation-redis")
    redis_proc = None
    try:
        pg_initdb(base, read_secret(secrets, "postgres_password"))
        pg.start()
        pg.psql("CREATE DATABASE llm_observatory")
        init_secrets = docker_style_secrets(secrets, base / "run-secrets", {})
        run(
            as_postgres(
                [
                    "env",
                    f"PATH={PG_BIN}:/usr/bin:/bin",
                    f"SECRETS_DIR={init_secrets}",
                    f"PGHOST={base}",
                    f"PGPORT={pg_port}",
                    "POSTGRES_USER=postgres",
                    "POSTGRES_DB=llm_observatory",
                    "bash",
                    str(DOCKER / "compose/scripts/db-init.sh"),
                ]
            )
        )
        shutil.rmtree(init_secrets)
        redis_proc = subprocess.Popen(
            [
                "sh",
                str(DOCKER / "redis/redis-entrypoint.sh"),
                "master",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
            ],
            env={
                "PATH": "/usr/bin:/bin",
                "REDIS_CONF": str(DOCKER / "redis.prod.conf"),
                "REDIS_PASSWORD_FILE": str(secrets / "redis_password.txt"),
                "REDIS_RUNTIME_DIR": str(redis_dir / "run"),
                "REDIS_DATA_DIR": str(redis_dir),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: redis_ping(redis_port, read_secret(secrets, "redis_password")), 15, "redis"
        )
        env = {
            "PATH": f"{VENV_BIN}:{PG_BIN}:/usr/bin:/bin",
            "HOME": str(redis_dir),
            "OBSERVATORY_DATA_DIR": str(redis_dir / "data"),
            "OBSERVATORY_DATABASE_URL_FILE": str(secrets / "database_url.txt"),
            "OBSERVATORY_DATABASE_READ_URL_FILE": str(secrets / "database_read_url.txt"),
            "OBSERVATORY_REDIS_URL_FILE": str(secrets / "redis_url.txt"),
            "OBSERVATORY_SECRET_KEY_FILE": str(secrets / "observatory_secret_key.txt"),
            "OBSERVATORY_INITIAL_ADMIN_KEY_FILE": str(secrets / "initial_admin_key.txt"),
            "OBSERVATORY_LOG_FORMAT": "text",
        }
        yield LiveStack(secrets, pg, redis_port, env)
    finally:
        if redis_proc is not None:
            stop_process(redis_proc)
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def rotate(stack: LiveStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        ["bash", str(ROTATE), "--mode", "direct", "--secrets-dir", str(stack.secrets), *args],
        env={
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "HOME": str(stack.secrets.parent),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(stack.pg.port),
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(stack.redis_port),
        },
        check=check,
        timeout=120,
    )


def pg_login(stack: LiveStack, user: str, password: str) -> bool:
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=stack.pg.port,
            dbname="llm_observatory",
            user=user,
            password=password,
            sslmode="require",
            connect_timeout=5,
        ):
            return True
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


def test_rotation_rekeys_database_and_redis_and_the_app_reconnects(live_stack: LiveStack) -> None:
    stack = live_stack
    # Data written with the original secrets.
    observatory(stack, "migrate")
    observatory(stack, "projects", "create", "rotation-probe")
    probe_key = observatory(
        stack, "keys", "create", "--project", "rotation-probe", "--role", "admin"
    ).stdout.strip()
    old_redis = read_secret(stack.secrets, "redis_password")
    redis_client(stack.redis_port, old_redis).set("probe:cache", "survives")
    before = snapshot(stack.secrets)
    verifiers = stack.pg.psql(
        "SELECT string_agg(rolname || '=' || rolpassword, ',' ORDER BY rolname) FROM pg_authid "
        "WHERE rolname IN ('postgres', 'replicator', 'grafana_reader', 'observatory')"
    )
    old_app = urlsplit(before["database_url.txt"].strip()).password
    assert old_app and pg_login(stack, "observatory", old_app)

    dry = rotate(stack, "--dry-run", "all")
    assert snapshot(stack.secrets) == before, dry.stdout

    result = rotate(stack, "all", "observatory_secret_key")
    after = snapshot(stack.secrets)
    rotated = (
        "postgres_password.txt",
        "replication_password.txt",
        "database_url.txt",
        "database_read_url.txt",
        "grafana_db_password.txt",
        "redis_password.txt",
        "redis_url.txt",
        "observatory_secret_key.txt",
    )
    for name in rotated:
        assert after[name] != before[name], name
        previous = stack.secrets / f"{name}.previous"
        assert previous.read_text() == before[name], name
        assert stat.S_IMODE((stack.secrets / name).stat().st_mode) == 0o600
    # Placeholders, the admin key and the backup passphrase are left alone.
    for name in ("pgbackrest_cipher_pass.txt", "initial_admin_key.txt", "s3_access_key.txt"):
        assert after[name] == before[name]
    assert "restart these services" in result.stdout

    # Every database role has a new SCRAM verifier; the old application password is dead.
    assert (
        stack.pg.psql(
            "SELECT string_agg(rolname || '=' || rolpassword, ',' ORDER BY rolname) FROM pg_authid "
            "WHERE rolname IN ('postgres', 'replicator', 'grafana_reader', 'observatory')"
        )
        != verifiers
    )
    new_app = urlsplit(after["database_url.txt"].strip()).password
    assert new_app and new_app != old_app
    assert not pg_login(stack, "observatory", old_app)
    assert pg_login(stack, "observatory", new_app)
    assert pg_login(stack, "grafana_reader", read_secret(stack.secrets, "grafana_db_password"))
    # The passwords never reached the server log.
    log = stack.pg.log.read_text()
    assert new_app not in log and read_secret(stack.secrets, "postgres_password") not in log

    # Redis: new password, same data, no restart.
    new_redis = read_secret(stack.secrets, "redis_password")
    with pytest.raises(redis.AuthenticationError):
        redis_client(stack.redis_port, old_redis).ping()
    assert redis_client(stack.redis_port, new_redis).get("probe:cache") == b"survives"

    # The application, started with the new files, connects and sees the old data.
    listed = observatory(stack, "projects", "list")
    assert "rotation-probe" in listed.stdout
    port = free_port()
    server = subprocess.Popen(
        [str(VENV_BIN / "observatory"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**stack.env, "OBSERVATORY_AUTO_MIGRATE": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def ready() -> dict[str, object]:
            response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
            return response.json() if response.status_code == 200 else {}

        body = wait_until(ready, 60, "the server to be ready with the rotated secrets")
        assert isinstance(body, dict) and body
        # A key created before the rotation still authenticates against the stored project.
        project = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/admin/project",
            headers={"Authorization": f"Bearer {probe_key}"},
            timeout=5,
        )
        assert project.status_code == 200, project.text
        assert "rotation-probe" in project.text
    finally:
        stop_process(server)
        if server.stderr is not None:
            server.stderr.close()


def test_rollback_restores_the_previous_application_password(live_stack: LiveStack) -> None:
    stack = live_stack
    current = urlsplit(read_secret(stack.secrets, "database_url")).password
    previous = urlsplit((stack.secrets / "database_url.txt.previous").read_text().strip()).password
    assert current and previous and current != previous
    rotate(stack, "--rollback", "database_url")
    assert urlsplit(read_secret(stack.secrets, "database_url")).password == previous
    assert pg_login(stack, "observatory", previous)
    assert not pg_login(stack, "observatory", current)
    listed = observatory(stack, "projects", "list")
    assert "rotation-probe" in listed.stdout


def test_secrets_that_cannot_be_rotated_are_refused_with_a_reason(live_stack: LiveStack) -> None:
    before = snapshot(live_stack.secrets)
    for name, reason in (
        ("pgbackrest_cipher_pass", "new repository"),
        ("initial_admin_key", "observatory keys"),
        ("slack_webhook_url", "third party"),
        ("no_such_secret", "unknown secret"),
    ):
        result = rotate(live_stack, name, check=False)
        assert result.returncode != 0
        assert reason in result.stderr, result.stderr
    assert snapshot(live_stack.secrets) == before
