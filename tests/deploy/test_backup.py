"""Backups with the real pgBackRest, verified by restoring (issue 9, docs/BACKUP_AND_RECOVERY.md).

Every test drives scripts/backup.sh against a throw-away PostgreSQL cluster that archives WAL with
the archive_command of docker/postgresql.prod.conf into repositories configured by
docker/pgbackrest/pgbackrest.conf (tests/deploy/backup_helpers.py). Spans arrive through a real
`observatory serve` process, so "acknowledged" means what it means in production: committed.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Server, start_server
from tests.deploy.backup_helpers import (
    BACKUP_SH,
    CANARY,
    PASSPHRASE,
    PGBACKREST_CONF,
    ROOT,
    STANZA,
    Cluster,
    Ingest,
    S3Server,
    base_path,
    chown_postgres,
    cluster,
    flip_bytes,
    prod_archive_command,
    s3_server,
    utc_now_target,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)


BUCKET = "observatory-backups"


@dataclass
class Primary:
    node: Cluster
    server: Server
    ingest: Ingest
    s3: S3Server


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Primary]:
    """The production shape, shared by the tests of this module: a primary archiving WAL into a
    local repository (repo1) and an S3 one (repo2, moto over TLS), and an Observatory server
    writing spans to it."""
    with s3_server() as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        settings = {
            "BACKUP_S3_BUCKET": BUCKET,
            "BACKUP_S3_ENDPOINT": f"127.0.0.1:{s3.port}",
            "BACKUP_S3_REGION": s3.region,
            "BACKUP_S3_URI_STYLE": "path",
            "BACKUP_S3_CA_FILE": str(s3.ca_file),  # TLS verified against the test's own CA
        }
        keys = {"s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}
        with cluster(settings, keys) as node:
            server = start_server(tmp_path_factory.mktemp("server"), node.database_url)
            ingest = Ingest(server.base_url, server.admin_key)
            try:
                yield Primary(node, server, ingest, s3)
            finally:
                ingest.close()
                server.stop()


def backups(node: Cluster, repo: int | None = None) -> list[dict[str, Any]]:
    """The backups `backup.sh list --json` reports (optionally of one repository)."""
    listing = json.loads(node.backup("list", "--json").ok().output)
    found = [b for stanza in listing if stanza["name"] == STANZA for b in stanza["backup"]]
    return [b for b in found if repo is None or b["database"]["repo-key"] == repo]


def ensure_backup(primary: Primary) -> None:
    """Tests may run alone (-k): make sure the repository holds a backup with spans in it."""
    if not backups(primary.node):
        primary.ingest.batch()
        primary.node.backup("run").ok()


def test_point_in_time_restore_has_exactly_the_spans_acknowledged_before_the_target(
    primary: Primary,
) -> None:
    node, ingest = primary.node, primary.ingest
    assert backups(node) == []
    in_full = ingest.batch()
    full = node.backup("run").ok()  # the compose default: automatic, and there is no full yet
    assert "starting full backup into repo1" in full.output
    assert "repo2: full backup done" in full.output  # and the off-site copy
    # The retention setting's path: defaults of .env.production reach pgBackRest.
    assert "--repo1-retention-full=30 " in full.output
    assert "--repo1-retention-full-type=time " in full.output
    assert "--repo1-cipher-pass=<redacted>" in full.output
    for secret in (PASSPHRASE, primary.s3.secret_key):
        assert secret not in full.output

    in_incr = ingest.batch()
    full_day = backups(node)[0]["label"][:8]
    day_before = datetime.now(UTC).strftime("%Y%m%d")
    incr = node.backup("run").ok()  # automatic again: a full exists from today -> incremental
    if day_before == full_day == datetime.now(UTC).strftime("%Y%m%d"):
        assert "starting incr backup into repo1" in incr.output
    assert [b["type"] for b in backups(node)][-1] == (
        "incr" if "incr backup" in incr.output else "full"
    )

    only_in_wal = ingest.batch()  # committed after the last backup: only the WAL archive has it
    time.sleep(0.2)  # the target lies strictly between two commits
    target = utc_now_target()
    time.sleep(0.2)
    after_target = ingest.batch()
    node.backup("check").ok()  # switches WAL: the commits after the target reach the archive

    restored = node.base / "restored-pitr"
    result = node.backup("restore", "--target-dir", str(restored), "--time", target).ok()
    assert f"the state at {target}" in result.output
    assert "archive_mode = 'off'" in (restored / "postgresql.auto.conf").read_text()
    port = node.start_copy(restored)
    try:
        span_ids = set(node.sql("SELECT span_id FROM spans", port=port).splitlines())
    finally:
        node.stop(restored)
    assert span_ids == set(in_full + in_incr + only_in_wal)
    assert not span_ids & set(after_target)
    assert node.metrics()["observatory_backup_last_status"] == 1


def test_repository_is_encrypted_and_a_wrong_passphrase_fails_clearly(primary: Primary) -> None:
    node = primary.node
    ensure_backup(primary)
    files = [p for p in node.repo.rglob("*") if p.is_file()]
    assert len(files) > 5
    # AES-256-CBC (OpenSSL format) for every file: data, WAL, manifests and info files.
    assert [p for p in files if not p.read_bytes().startswith(b"Salted__")] == []
    needle = CANARY.encode()
    for path in files:
        raw = path.read_bytes()
        assert needle not in raw, path
        # Were a file only compressed, the canary would show once decompressed.
        with contextlib.suppress(OSError, EOFError, zlib.error):
            assert needle not in gzip.decompress(raw), path
    # The search can find the canary: the primary's own data files hold it in plain text.
    data_files = [p for p in (node.data / "base").rglob("*") if p.is_file()]
    assert any(needle in p.read_bytes() for p in data_files)

    wrong = node.base / "secrets" / "wrong_cipher_pass"
    wrong.write_text("not-the-repository-passphrase-0123456789\n")
    chown_postgres(wrong)
    target = node.base / "restored-wrong-passphrase"
    result = node.backup(
        "restore", "--target-dir", str(target), env={"BACKUP_CIPHER_PASS_FILE": str(wrong)}
    )
    assert result.returncode != 0
    assert "cannot be decrypted with this passphrase" in result.output
    assert "restore FAILED" in result.output
    assert not (target / "PG_VERSION").exists()

    missing = node.backup("list", env={"BACKUP_CIPHER_PASS_FILE": str(node.base / "nope")})
    assert missing.returncode != 0
    assert "nope is missing or unreadable" in missing.output


def test_restore_test_reports_success_and_fails_on_a_corrupted_repository(
    primary: Primary,
) -> None:
    node = primary.node
    ensure_backup(primary)
    primary.ingest.batch()
    node.backup("check").ok()  # every committed span is in the archive now
    spans_on_primary = int(node.sql("SELECT count(*) FROM spans"))
    started = int(time.time())

    passed = node.backup("restore-test").ok()
    assert "spans checksum matches the primary" in passed.output
    assert "data page checksums ok" in passed.output
    assert "restore-test: PASSED" in passed.output
    metrics = node.metrics()
    assert metrics["observatory_restore_test_last_status"] == 1
    assert metrics["observatory_restore_test_last_success_timestamp_seconds"] >= started
    assert metrics["observatory_restore_test_restored_spans"] == spans_on_primary
    assert list((node.base / "restore-test").glob("run.*")) == []  # the scratch copy is gone
    # Written atomically: the textfile collector only ever sees complete files.
    assert sorted(p.name for p in node.metrics_file.parent.iterdir()) == [
        ".pgbackrest.prom.lock",
        "pgbackrest.prom",
    ]
    last_success = metrics["observatory_restore_test_last_success_timestamp_seconds"]
    no_retry = {"PGBACKREST_JOB_RETRY": "0"}  # fail at once instead of retrying for 15 s

    # A damaged backup file: the restore fails.
    damaged = node.base / "repo-damaged-backup"
    shutil.copytree(node.repo, damaged)
    newest = max((damaged / "backup" / STANZA).glob("2*"), key=lambda p: p.stat().st_mtime)
    # A data file (bundle), not the manifest: pgBackRest keeps a second copy of that one.
    bundles = [p for p in (newest / "bundle").iterdir()]
    flip_bytes(max(bundles, key=lambda p: p.stat().st_size))
    chown_postgres(damaged)
    failed = node.backup("restore-test", env={**no_retry, "PGBACKREST_REPO1_PATH": str(damaged)})
    assert failed.returncode != 0
    assert "restore-test: restore FAILED" in failed.output
    metrics = node.metrics()
    assert metrics["observatory_restore_test_last_status"] == 0
    assert metrics["observatory_restore_test_last_success_timestamp_seconds"] == last_success

    # A damaged WAL segment after the backup: PostgreSQL just stops replaying there, so only
    # `pgbackrest verify` can tell; the restore test must still fail.
    node.backup("restore-test").ok()
    damaged_wal = node.base / "repo-damaged-wal"
    shutil.copytree(node.repo, damaged_wal)
    segments = sorted(
        p
        for p in (damaged_wal / "archive" / STANZA).rglob("*")
        if re.match(r"^[0-9A-F]{24}-", p.name)
    )
    flip_bytes(segments[-1])
    chown_postgres(damaged_wal)
    failed = node.backup(
        "restore-test", env={**no_retry, "PGBACKREST_REPO1_PATH": str(damaged_wal)}
    )
    assert failed.returncode != 0
    assert "pgbackrest verify found damaged or missing files" in failed.output
    assert node.metrics()["observatory_restore_test_last_status"] == 0


def test_retention_expires_full_backups_as_configured() -> None:
    with cluster(prefix="obs-backup-retention-") as node:
        node.sql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 10000) g")
        node.backup("run", "full").ok()
        # Time-based retention (the production setting): two recent fulls, nothing expires.
        second = node.backup("run", "full", env={"BACKUP_RETENTION_FULL_DAYS": "7"}).ok()
        assert "--repo1-retention-full=7 " in second.output
        assert "--repo1-retention-full-type=time " in second.output
        first_label, second_label = (b["label"] for b in backups(node))
        node.sql("INSERT INTO filler SELECT g FROM generate_series(1, 10000) g")
        # Count-based (deterministic here): keep the newest two fulls.
        count = {"BACKUP_RETENTION_FULL_TYPE": "count", "BACKUP_RETENTION_FULL_COUNT": "2"}
        third = node.backup("run", "full", env=count).ok()
        assert "--repo1-retention-full=2 " in third.output
        assert "--repo1-retention-full-type=count " in third.output
        assert f"expire full backup {first_label}" in third.output
        kept = backups(node)
        assert [b["label"] for b in kept] == [second_label, kept[1]["label"]]
        assert kept[1]["label"] not in (first_label, second_label)
        assert not (node.repo / "backup" / STANZA / first_label).exists()
        # The WAL only the expired backup needed is gone too.
        oldest_needed = kept[0]["archive"]["start"]
        segments = [
            p.name[:24]
            for p in (node.repo / "archive" / STANZA).rglob("*")
            if re.match(r"^[0-9A-F]{24}-", p.name)
        ]
        assert segments and min(segments) >= oldest_needed

        bad = node.backup("run", env={"BACKUP_RETENTION_FULL_DAYS": "thirty"})
        assert bad.returncode != 0
        assert "must be a whole number" in bad.output
        assert node.metrics()["observatory_backup_last_status"] == 0  # monitoring sees it


def test_schedule_takes_a_first_full_backup_at_once_and_stops_on_sigterm() -> None:
    with cluster(prefix="obs-backup-schedule-") as node:
        log = node.base / "schedule.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                ["bash", str(BACKUP_SH), "schedule"],
                env=node.backup_env(),
                cwd=node.base,
                stdout=handle,
                stderr=subprocess.STDOUT,
                user="postgres",
                group="postgres",
                extra_groups=[],
            )
        try:
            wait_for(lambda: "repo1: full backup done" in log.read_text(), 120, "the first backup")
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(30)
        output = log.read_text()
        assert "schedule: full backup daily at 02:00 UTC, incremental hourly at :00" in output
        assert "no full backup yet, taking one now" in output
        assert returncode == 0 and "schedule: stopping" in output
        assert [b["type"] for b in backups(node)] == ["full"]
        assert node.metrics()["observatory_backup_last_status"] == 1


def test_s3_repository_holds_encrypted_backups_that_restore(primary: Primary) -> None:
    node, ingest, s3 = primary.node, primary.ingest, primary.s3
    ensure_backup(primary)
    assert {b["type"] for b in backups(node, repo=2)} >= {"full"}
    objects = s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]
    names = [o["Key"] for o in objects]
    assert any(n.startswith(f"llm-observatory/backup/{STANZA}/") for n in names)
    assert any(n.startswith(f"llm-observatory/archive/{STANZA}/") for n in names)
    for name in names:
        body = s3.client().get_object(Bucket=BUCKET, Key=name)["Body"].read()
        assert body.startswith(b"Salted__"), name
        assert CANARY.encode() not in body, name

    verified = node.backup("verify").ok()
    assert "repo1: verify passed" in verified.output and "repo2: verify passed" in verified.output

    ingest.batch()  # only in WAL, which archive-push sends to both repositories
    node.backup("check").ok()
    restored = node.base / "restored-from-s3"
    result = node.backup("restore", "--repo", "2", "--target-dir", str(restored)).ok()
    assert "from repo2" in result.output
    port = node.start_copy(restored)
    try:
        span_ids = set(node.sql("SELECT span_id FROM spans", port=port).splitlines())
    finally:
        node.stop(restored)
    assert span_ids == set(ingest.acked)


# ------------------------------------------------------------------ configuration and commands


def _conf_sections(path: Path) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, {})
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()] = value.strip()
    return sections


def test_pgbackrest_configuration_encrypts_both_repositories_and_holds_no_secret() -> None:
    conf = _conf_sections(PGBACKREST_CONF)
    glob = conf["global"]
    assert glob["repo1-cipher-type"] == glob["repo2-cipher-type"] == "aes-256-cbc"
    assert glob["repo2-type"] == "s3"
    assert glob["repo1-retention-full-type"] == glob["repo2-retention-full-type"] == "time"
    assert glob["repo1-retention-full"] == glob["repo2-retention-full"] == "30"
    assert conf[STANZA]["pg1-path"] == "/var/lib/postgresql/data/pgdata"
    assert conf["global:archive-push"]["archive-async"] == "y"
    every_key = {k for section in conf.values() for k in section}
    assert not {k for k in every_key if re.search(r"cipher-pass|s3-key|s3-token", k)}
    assert prod_archive_command() == f"pgbackrest --stanza={STANZA} archive-push %p"
    apt = (ROOT / ".ci" / "apt-packages.d" / "backup.txt").read_text()
    packages = [line.split() for line in apt.splitlines() if line and not line.startswith("#")]
    assert ["pgbackrest", "pgbackrest"] in packages


def test_compose_backup_service_runs_backup_sh_with_the_settings_it_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose" / "docker-compose.prod.yml").read_text())
    services = compose["services"]
    for name in ("backup", "backup-scheduler"):
        service = services[name]
        assert service["profiles"] == ["backup"]
        mounts = {v.split(":")[1] for v in service["volumes"] if isinstance(v, str)}
        assert {"/etc/pgbackrest/pgbackrest.conf", "/usr/local/bin/backup.sh"} <= mounts
        assert {"pgbackrest_cipher_pass", "s3_access_key", "s3_secret_key"} <= set(
            service["secrets"]
        )
        env = service["environment"]
        assert env["PGBACKREST_STANZA"] == STANZA and env["BACKUP_METRICS_DIR"]
        assert env["SECRETS_DIR"] == "/run/secrets"
    assert services["backup"]["command"] == ["run"]
    assert services["backup-scheduler"]["command"] == ["schedule"]


def _source(env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, str], str]:
    proc = subprocess.run(
        ["bash", "-c", f'. "{BACKUP_SH}" && env -0'],
        env={"PATH": base_path(), "BACKUP_RUNTIME_DIR": str(tmp_path / "runtime"), **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    pairs = (i.split("=", 1) for i in proc.stdout.decode().split("\0") if "=" in i)
    return proc.returncode, dict(pairs), proc.stderr.decode()


def test_sourcing_backup_sh_exports_the_pgbackrest_environment(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pgbackrest_cipher_pass").write_text("passphrase-from-the-secret\n")
    (secrets / "s3_access_key").write_text("AKIAEXAMPLE\n")
    (secrets / "s3_secret_key").write_text("CHANGE-ME-s3-secret-key\n")
    base = {"SECRETS_DIR": str(secrets), "BACKUP_PGBACKREST_CONF": str(PGBACKREST_CONF)}

    # Local only (BACKUP_S3_BUCKET empty): repo2 disappears, even a stray override of it.
    rc, env, _ = _source(
        {**base, "BACKUP_RETENTION_DAYS": "14", "PGBACKREST_REPO2_PATH": "/x"}, tmp_path
    )
    assert rc == 0
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] == "passphrase-from-the-secret"
    assert env["PGBACKREST_REPO1_RETENTION_FULL"] == "14"
    assert env["PGBACKREST_REPO1_RETENTION_FULL_TYPE"] == "time"
    assert env["PGBACKREST_STANZA"] == STANZA and env["BACKUP_REPOS"] == "1"
    assert not [k for k in env if k.startswith("PGBACKREST_REPO2_")]
    rendered = Path(env["PGBACKREST_CONFIG"]).read_text()
    assert "repo1-cipher-type=aes-256-cbc" in rendered
    assert not re.search(r"^\s*repo2-", rendered, re.M)

    # With S3: a placeholder key is refused...
    s3 = {**base, "BACKUP_S3_BUCKET": "bkt", "BACKUP_S3_ENDPOINT": "minio.internal:9000"}
    rc, _, err = _source(s3, tmp_path)
    assert rc != 0 and "s3_secret_key is empty or still a CHANGE-ME placeholder" in err
    # ...a real one gives repo2 its bucket, endpoint, port, keys, passphrase and retention.
    (secrets / "s3_secret_key").write_text("real-secret\n")
    rc, env, _ = _source({**s3, "BACKUP_RETENTION_FULL_DAYS": "45"}, tmp_path)
    assert rc == 0 and env["BACKUP_REPOS"] == "1 2"
    assert env["PGBACKREST_CONFIG"] == str(PGBACKREST_CONF)
    assert env["PGBACKREST_REPO2_S3_BUCKET"] == "bkt"
    assert env["PGBACKREST_REPO2_S3_ENDPOINT"] == "minio.internal"
    assert env["PGBACKREST_REPO2_STORAGE_PORT"] == "9000"
    assert env["PGBACKREST_REPO2_S3_REGION"] == "us-east-1"
    assert env["PGBACKREST_REPO2_S3_KEY"] == "AKIAEXAMPLE"
    assert env["PGBACKREST_REPO2_S3_KEY_SECRET"] == "real-secret"
    assert env["PGBACKREST_REPO2_CIPHER_PASS"] == "passphrase-from-the-secret"
    assert env["PGBACKREST_REPO2_RETENTION_FULL"] == env["PGBACKREST_REPO1_RETENTION_FULL"] == "45"

    # No passphrase, no backups: encryption is not optional.
    rc, _, err = _source({**base, "SECRETS_DIR": str(tmp_path / "none")}, tmp_path)
    assert rc != 0 and "pgbackrest_cipher_pass is missing or unreadable" in err


def test_restore_refuses_to_overwrite_and_checks_its_arguments(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pgbackrest_cipher_pass").write_text("p" * 40)
    live = tmp_path / "live-pgdata"
    live.mkdir()
    (live / "PG_VERSION").write_text("15\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    env = {
        "PATH": base_path(),
        "SECRETS_DIR": str(secrets),
        "BACKUP_PGBACKREST_CONF": str(PGBACKREST_CONF),
        "BACKUP_RUNTIME_DIR": str(tmp_path / "runtime"),
        "PGBACKREST_PG1_PATH": str(live),
    }

    def script(*args: str) -> tuple[int, str]:
        proc = subprocess.run(
            ["bash", str(BACKUP_SH), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.returncode, proc.stdout + proc.stderr

    cases = {
        ("restore",): "--target-dir DIR is required",
        ("restore", "--target-dir", str(live)): "is the primary's live data directory",
        ("restore", "--target-dir", str(busy)): "is not empty",
        ("restore", "--target-dir", "relative/dir"): "must be an absolute path",
        ("restore", "--target-dir", str(tmp_path / "new"), "--time", "2026-01-01 00:00:00"): (
            "with a UTC offset"
        ),
        ("run", "weekly"): "must be auto, full, incr or diff",
    }
    for args, message in cases.items():
        returncode, output = script(*args)
        assert returncode != 0 and message in output, (args, output)
    assert not (tmp_path / "new").exists()
    assert script("frobnicate")[0] == 2
    returncode, output = script("help")
    assert returncode == 0
    for command in ("run", "schedule", "list", "restore", "verify", "restore-test"):
        assert f"backup.sh {command}" in output


def test_backup_guide_covers_the_commands_metrics_and_recovery() -> None:
    guide = (ROOT / "docs" / "BACKUP_AND_RECOVERY.md").read_text()
    for needle in (
        "backup.sh run",
        "backup.sh schedule",
        "backup.sh list",
        "backup.sh restore --target-dir",
        "backup.sh verify",
        "backup.sh restore-test",
        "observatory_backup_last_success_timestamp_seconds",
        "observatory_backup_last_status",
        "observatory_restore_test_last_success_timestamp_seconds",
        "observatory_restore_test_last_status",
        "pgbackrest_cipher_pass",
        "BACKUP_RETENTION_FULL_DAYS",
        "BACKUP_S3_BUCKET",
        "primary is lost",
    ):
        assert needle in guide, needle
    assert os.access(BACKUP_SH, os.X_OK)
