"""PostgreSQL 15 started with docker/postgresql.prod.conf and docker/postgresql.replica.conf.

The shipped files are copied unchanged; postgresql.local.conf (the include both read last)
scales the memory down, and hosts, ports and paths come from the command line. The database
entrypoint's init script creates the roles, the replica is cloned by the entrypoint's own
pg_basebackup logic and then streams over TLS through slot replica_1, and PgBouncer runs with
docker/pgbouncer/pgbouncer.ini in front of the primary.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from .conftest import (
    DOCKER,
    PG_BIN,
    PgServer,
    as_postgres,
    docker_style_secrets,
    free_port,
    make_cert,
    parse_conf,
    pg_initdb,
    popen_as_postgres,
    prepare_pg_base,
    private_tmpdir,
    read_secret,
    run,
    stop_process,
    wait_until,
)

DB = "llm_observatory"


@dataclass
class Primary:
    server: PgServer
    secrets: Path  # Docker-style (/run/secrets layout)
    app_password: str
    grafana_password: str
    replication_password: str
    superuser_password: str

    def dsn(self, user: str, password: str, sslmode: str = "require", db: str = DB) -> str:
        return (
            f"host=127.0.0.1 port={self.server.port} dbname={db} user={user} "
            f"password={password} sslmode={sslmode} connect_timeout=5"
        )


@pytest.fixture(scope="module")
def primary(generated_secrets: Path) -> Iterator[Primary]:
    base, port = prepare_pg_base("postgresql.prod.conf", "obs-deploy-pg-primary-")
    server = PgServer(base, port, "postgresql.prod.conf")
    superuser_password = read_secret(generated_secrets, "postgres_password")
    app_url = read_secret(generated_secrets, "database_url").replace(
        "@pgbouncer:6432/", f"@127.0.0.1:{port}/"
    )
    secrets = docker_style_secrets(
        generated_secrets, base / "run-secrets", {"database_url": app_url}
    )
    try:
        pg_initdb(base, superuser_password)
        server.start()
        server.psql(f"CREATE DATABASE {DB}")
        # The init script of the database image, as the entrypoint runs it on first start.
        run(
            as_postgres(
                [
                    "env",
                    f"PATH={PG_BIN}:/usr/bin:/bin",
                    f"SECRETS_DIR={secrets}",
                    f"PGHOST={base}",
                    f"PGPORT={port}",
                    "POSTGRES_USER=postgres",
                    f"POSTGRES_DB={DB}",
                    "bash",
                    str(DOCKER / "compose/scripts/db-init.sh"),
                ]
            )
        )
        yield Primary(
            server=server,
            secrets=secrets,
            app_password=app_url.split(":")[2].split("@")[0],
            grafana_password=read_secret(generated_secrets, "grafana_db_password"),
            replication_password=read_secret(generated_secrets, "replication_password"),
            superuser_password=superuser_password,
        )
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_primary_conf_is_sized_for_32gb_and_archives_with_pgbackrest() -> None:
    conf = parse_conf(DOCKER / "postgresql.prod.conf")
    assert conf["shared_buffers"] == "8GB"
    assert conf["effective_cache_size"] == "24GB"
    assert conf["archive_mode"] == "on"
    assert conf["archive_command"] == "pgbackrest --stanza=llm-observatory archive-push %p"
    replica = parse_conf(DOCKER / "postgresql.replica.conf")
    assert replica["shared_buffers"] == "4GB"
    assert replica["effective_cache_size"] == "12GB"
    # A hot standby refuses to start with less than the primary's values of these.
    for name in ("max_connections", "max_worker_processes", "max_wal_senders"):
        assert int(replica[name]) >= int(conf[name]), name


def test_primary_runs_the_shipped_settings(primary: Primary) -> None:
    show = {
        name: primary.server.psql(f"SHOW {name}")
        for name in (
            "archive_mode",
            "archive_command",
            "wal_level",
            "ssl",
            "ssl_min_protocol_version",
            "password_encryption",
            "shared_preload_libraries",
            "log_min_duration_statement",
            "log_statement",
            "shared_buffers",
            "hba_file",
            "max_slot_wal_keep_size",
        )
    }
    assert show["archive_mode"] == "on"
    assert show["archive_command"] == "pgbackrest --stanza=llm-observatory archive-push %p"
    assert show["wal_level"] == "replica"
    assert show["ssl"] == "on"
    assert show["ssl_min_protocol_version"] == "TLSv1.2"
    assert show["password_encryption"] == "scram-sha-256"
    assert "pg_stat_statements" in show["shared_preload_libraries"]
    assert show["log_min_duration_statement"] == "500ms"
    assert show["log_statement"] == "ddl"
    # Memory comes from the override include, everything else from the shipped file.
    assert show["shared_buffers"] == "32MB"
    assert show["max_slot_wal_keep_size"] == "256MB"
    # No setting in the files was rejected or ignored.
    errors = primary.server.psql(
        "SELECT string_agg(name || ': ' || error, '; ') FROM pg_file_settings "
        "WHERE error IS NOT NULL AND name NOT IN "
        "('listen_addresses', 'port', 'unix_socket_directories', 'hba_file')"
    )
    # (those four are the host, port and paths the command line overrides)
    assert errors == ""


def test_tcp_requires_tls_and_scram(primary: Primary) -> None:
    with psycopg.connect(primary.dsn("observatory", primary.app_password)) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None and row[0] is True and row[1] in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|pg_hba\.conf rejects"):
        psycopg.connect(primary.dsn("observatory", primary.app_password, sslmode="disable"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(primary.dsn("observatory", "wrong-password"))
    stored = primary.server.psql(
        "SELECT string_agg(DISTINCT left(rolpassword, 14), ',') FROM pg_authid "
        "WHERE rolname IN ('observatory', 'replicator', 'grafana_reader', 'postgres')"
    )
    assert stored == "SCRAM-SHA-256$"


def test_init_script_creates_least_privilege_roles(primary: Primary) -> None:
    with psycopg.connect(primary.dsn("observatory", primary.app_password), autocommit=True) as app:
        app.execute("CREATE TABLE spans_probe (id int primary key, name text)")
        app.execute("INSERT INTO spans_probe VALUES (1, 'visible to grafana')")
        owner = app.execute(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
        assert owner == ("observatory",)
        superuser = app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser.fetchone() == (False,)
    # Tables get no automatic grant: the migration grants the dashboard tables by name, so key
    # hashes and the audit log stay out of Grafana's reach.
    with (
        psycopg.connect(primary.dsn("grafana_reader", primary.grafana_password)) as reader,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        reader.execute("SELECT name FROM spans_probe")
    with psycopg.connect(primary.dsn("observatory", primary.app_password), autocommit=True) as app:
        app.execute("GRANT SELECT ON spans_probe TO grafana_reader")
    with psycopg.connect(primary.dsn("grafana_reader", primary.grafana_password)) as reader:
        assert reader.execute("SELECT name FROM spans_probe").fetchone() == ("visible to grafana",)
        assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("INSERT INTO spans_probe VALUES (2, 'no')")
    # The superuser cannot log in over the network from anywhere but loopback; the replication
    # role cannot open an ordinary session on the application database.
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf"):
        psycopg.connect(primary.dsn("replicator", primary.replication_password))
    # Running the init script again changes nothing and does not fail.
    run(
        as_postgres(
            [
                "env",
                f"PATH={PG_BIN}:/usr/bin:/bin",
                f"SECRETS_DIR={primary.secrets}",
                f"PGHOST={primary.server.base}",
                f"PGPORT={primary.server.port}",
                "POSTGRES_USER=postgres",
                f"POSTGRES_DB={DB}",
                "bash",
                str(DOCKER / "compose/scripts/db-init.sh"),
            ]
        )
    )


def test_role_passwords_stay_out_of_the_server_log(primary: Primary) -> None:
    log = primary.server.log.read_text()
    for password in (primary.app_password, primary.grafana_password, primary.replication_password):
        assert password not in log


def test_guide_query_on_pg_stat_statements_and_slow_query_log(primary: Primary) -> None:
    with psycopg.connect(primary.dsn("observatory", primary.app_password)) as conn:
        conn.execute("SELECT pg_sleep(0.6)")
    # The production guide's "Check slow queries" command, verbatim.
    rows = primary.server.psql(
        "SELECT query, calls, total_exec_time, mean_exec_time FROM pg_stat_statements "
        "ORDER BY total_exec_time DESC LIMIT 10;",
        db=DB,
    )
    assert "pg_sleep" in rows
    wait_until(
        lambda: (
            "pg_sleep(0.6)" in primary.server.log.read_text()
            and "duration:" in primary.server.log.read_text()
        ),
        10,
        "the slow query in the server log",
    )


@pytest.fixture(scope="module")
def replica(primary: Primary) -> Iterator[tuple[PgServer, subprocess.Popen[bytes]]]:
    base, port = prepare_pg_base("postgresql.replica.conf", "obs-deploy-pg-replica-")
    server = PgServer(base, port, "postgresql.replica.conf")
    passfile = base / "replication.pgpass"
    conninfo = (
        f"host=127.0.0.1 port={primary.server.port} user=replicator passfile={passfile} "
        "sslmode=require application_name=replica_1"
    )
    env_cmd = [
        "env",
        f"PATH={PG_BIN}:/usr/bin:/bin",
        f"PGDATA={base / 'data'}",
        f"HOME={base}",
        "PRIMARY_HOST=127.0.0.1",
        f"PRIMARY_PORT={primary.server.port}",
        f"SECRETS_DIR={primary.secrets}",
        f"REPLICATION_PASSFILE={passfile}",
        f"POSTGRES_CONFIG_FILE={server.config_file}",
        "DB_PRELOAD_LIBRARIES=pg_stat_statements",
        f"PRODUCTION_ENV_FILE={base / 'absent.env'}",
        f"PGBACKREST_CONFIG={base / 'absent.conf'}",
        "bash",
        str(DOCKER / "compose/scripts/db-entrypoint.sh"),
        "replica",
    ]
    for option in [o for o in server.options() if not o.startswith("config_file=")]:
        env_cmd += ["-c", option]
    env_cmd += ["-c", f"primary_conninfo={conninfo}"]
    log = open(base / "entrypoint.log", "wb")  # noqa: SIM115 - closed in finally
    proc = popen_as_postgres(env_cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until(
                lambda: server.psql("SELECT pg_is_in_recovery()", check=False) == "t",
                90,
                "the replica to start",
            )
        except AssertionError as exc:
            log_text = (base / "entrypoint.log").read_text()[-3000:]
            raise AssertionError(f"{exc}\n{log_text}") from exc
        yield server, proc
    finally:
        proc.send_signal(2)  # SIGINT: fast shutdown
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_replica_clones_and_streams_over_tls(
    primary: Primary, replica: tuple[PgServer, subprocess.Popen[bytes]]
) -> None:
    server, _ = replica
    with psycopg.connect(primary.dsn("observatory", primary.app_password), autocommit=True) as app:
        app.execute("CREATE TABLE IF NOT EXISTS replication_probe (id int)")
        app.execute("INSERT INTO replication_probe VALUES (42)")
    wait_until(
        lambda: server.psql("SELECT id FROM replication_probe", db=DB, check=False) == "42",
        30,
        "the row to reach the replica",
    )
    streaming = primary.server.psql(
        "SELECT r.application_name, r.state, s.ssl FROM pg_stat_replication r "
        "JOIN pg_stat_ssl s USING (pid)"
    )
    assert streaming == "replica_1|streaming|t"
    slot = primary.server.psql("SELECT slot_name, active FROM pg_replication_slots")
    assert slot == "replica_1|t"
    assert server.psql("SHOW hot_standby_feedback") == "on"
    assert server.psql("SHOW primary_slot_name") == "replica_1"
    # The standby answers reads and refuses writes.
    with pytest.raises(AssertionError, match="read-only transaction"):
        server.psql("INSERT INTO replication_probe VALUES (1)", db=DB)
    errors = server.psql(
        "SELECT string_agg(name || ': ' || error, '; ') FROM pg_file_settings "
        "WHERE error IS NOT NULL AND name NOT IN "
        "('listen_addresses', 'port', 'unix_socket_directories', 'hba_file')"
    )
    # (those four are the host, port and paths the command line overrides)
    assert errors == ""
    # The passfile holding the replication password is private to the server's user.
    passfile = server.base / "replication.pgpass"
    assert passfile.stat().st_mode & 0o777 == 0o600


def test_pgbouncer_pools_the_primary_with_tls_and_scram(primary: Primary, processes: list) -> None:
    base = private_tmpdir("obs-deploy-pgbouncer-", "postgres")
    try:
        crt, key = make_cert(
            base / "tls", "pgbouncer", "DNS:localhost,IP:127.0.0.1", owner="postgres"
        )
        port = free_port()
        ini = (DOCKER / "pgbouncer/pgbouncer.ini").read_text()
        for old, new in {
            "host=timescaledb-primary port=5432": f"host=127.0.0.1 port={primary.server.port}",
            "host=timescaledb-replica port=5432": f"host=127.0.0.1 port={primary.server.port}",
            "listen_addr = 0.0.0.0": "listen_addr = 127.0.0.1",
            "listen_port = 6432": f"listen_port = {port}",
            "/run/pgbouncer/userlist.txt": str(base / "userlist.txt"),
            "/run/secrets/postgres_tls_cert": str(crt),
            "/run/secrets/postgres_tls_key": str(key),
        }.items():
            assert old in ini, old
            ini = ini.replace(old, new)
        (base / "pgbouncer.ini").write_text(ini)
        for path in base.iterdir():
            shutil.chown(path, "postgres", "postgres")
        secrets = primary.secrets
        proc = subprocess.Popen(
            as_postgres(
                [
                    "env",
                    "PATH=/usr/sbin:/usr/bin:/bin",
                    f"SECRETS_DIR={secrets}",
                    f"PGBOUNCER_AUTH_FILE={base / 'userlist.txt'}",
                    f"PGBOUNCER_INI={base / 'pgbouncer.ini'}",
                    "sh",
                    str(DOCKER / "pgbouncer/pgbouncer-entrypoint.sh"),
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(base / "pgbouncer.log", "wb"),  # noqa: SIM115
        )
        processes.append(proc)
        dsn = (
            f"host=127.0.0.1 port={port} dbname={DB} user=observatory "
            f"password={primary.app_password} connect_timeout=5"
        )
        try:
            wait_until(
                lambda: psycopg.connect(dsn + " sslmode=require").close() or True, 20, "pgbouncer"
            )
        except AssertionError as exc:
            log_text = (base / "pgbouncer.log").read_text()[-3000:]
            raise AssertionError(f"{exc}\n{log_text}") from exc
        with psycopg.connect(dsn + " sslmode=require") as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("observatory",)
            assert conn.pgconn.ssl_in_use
        with psycopg.connect(
            dsn.replace(f"dbname={DB}", f"dbname={DB}_ro") + " sslmode=require"
        ) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (DB,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn + " sslmode=disable")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn.replace(primary.app_password, "wrong") + " sslmode=require")
        # PgBouncer's own connections to PostgreSQL use TLS too.
        assert (
            primary.server.psql(
                "SELECT bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.usename = 'observatory' AND a.backend_type = 'client backend'"
            )
            == "t"
        )
        assert (base / "userlist.txt").stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(base, ignore_errors=True)
