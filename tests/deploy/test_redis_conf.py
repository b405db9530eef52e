"""Redis started with docker/redis.prod.conf and Sentinel with docker/redis/sentinel.conf.

Both go through docker/redis/redis-entrypoint.sh, as in the containers; only the port, the bind
address and the directories differ (REDIS_DATA_DIR, REDIS_RUNTIME_DIR, command-line --port).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from .conftest import DOCKER, free_port, redis_client, redis_ping, stop_process, tool, wait_until

PASSWORD = "TestRedisPassword0123456789abcdefABCDEF"


@dataclass
class RedisProc:
    port: int
    proc: subprocess.Popen[bytes]
    runtime: Path
    log: Path

    def client(self, password: str | None = PASSWORD) -> redis.Redis:
        return redis_client(self.port, password)


def start_redis(
    tmp: Path, name: str, role: str, *extra: str, env: dict[str, str] | None = None
) -> RedisProc:
    tool("redis-server")
    base = tmp / name
    (base / "data").mkdir(parents=True)
    password_file = base / "redis_password"
    password_file.write_text(PASSWORD + "\n")
    port = free_port()
    log = base / "redis.log"
    command = [
        "sh",
        str(DOCKER / "redis/redis-entrypoint.sh"),
        role,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        *extra,
    ]
    proc = subprocess.Popen(
        command,
        env={
            "PATH": "/usr/bin:/bin",
            "REDIS_CONF": str(DOCKER / "redis.prod.conf"),
            "SENTINEL_CONF": str(base / "sentinel.conf"),
            "REDIS_PASSWORD_FILE": str(password_file),
            "REDIS_RUNTIME_DIR": str(base / "run"),
            "REDIS_DATA_DIR": str(base / "data"),
            **(env or {}),
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    started = RedisProc(port, proc, base / "run", log)
    try:
        wait_until(lambda: redis_ping(port, PASSWORD), 15, f"{name} to answer")
    except AssertionError as exc:
        stop_process(proc)
        raise AssertionError(f"{exc}\n{log.read_text()[-2000:]}") from exc
    return started


@pytest.fixture
def master(tmp_path: Path, processes: list) -> Iterator[RedisProc]:
    started = start_redis(tmp_path, "master", "master")
    processes.append(started.proc)
    yield started


def test_password_required_and_not_on_the_command_line(master: RedisProc) -> None:
    with pytest.raises(redis.AuthenticationError):
        master.client(password=None).get("x")
    with pytest.raises(redis.AuthenticationError):
        master.client(password="wrong").get("x")
    assert master.client().ping()
    cmdline = Path(f"/proc/{master.proc.pid}/cmdline").read_bytes().decode()
    assert PASSWORD not in cmdline
    runtime_conf = master.runtime / "redis.conf"
    assert runtime_conf.stat().st_mode & 0o777 == 0o600


def test_cache_memory_policy_and_persistence(master: RedisProc) -> None:
    client = master.client()
    config = client.config_get("*")
    assert config["maxmemory-policy"] == "allkeys-lfu"
    assert int(config["maxmemory"]) == 2 * 1024**3
    assert config["appendonly"] == "no"
    assert config["save"] == "3600 1 300 100 60 10000"
    assert config["stop-writes-on-bgsave-error"] == "no"
    assert config["protected-mode"] == "yes"


def test_dangerous_commands_are_disabled(master: RedisProc) -> None:
    client = master.client()
    client.set("cached:query", "value")
    for command in ("FLUSHALL", "FLUSHDB", "KEYS *", "DEBUG SLEEP 0"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command.split())
    # Writing files through CONFIG SET (the classic Redis take-over) is refused.
    with pytest.raises(redis.ResponseError, match="protected config"):
        client.config_set("dir", "/tmp")
    with pytest.raises(redis.ResponseError):
        client.execute_command("MODULE", "LOAD", "/tmp/x.so")
    assert client.get("cached:query") == b"value"


def test_data_survives_a_restart_through_the_snapshot(tmp_path: Path, processes: list) -> None:
    first = start_redis(tmp_path, "persist", "master")
    processes.append(first.proc)
    first.client().set("warm", "cache")
    stop_process(first.proc)  # SIGTERM: Redis saves its snapshot on shutdown (save is set)
    assert (tmp_path / "persist" / "data" / "dump.rdb").exists()
    log = (tmp_path / "persist" / "redis.log").read_text()
    assert "DB saved on disk" in log


def test_replica_and_three_sentinels_fail_over_with_quorum_two(
    tmp_path: Path, processes: list
) -> None:
    primary = start_redis(tmp_path, "ha-master", "master")
    processes.append(primary.proc)
    replica = start_redis(
        tmp_path,
        "ha-replica",
        "replica",
        env={"REDIS_MASTER_HOST": "127.0.0.1", "REDIS_MASTER_PORT": str(primary.port)},
    )
    processes.append(replica.proc)
    primary.client().set("session", "kept")
    wait_until(lambda: replica.client().get("session") == b"kept", 15, "replication")
    assert replica.client().info("replication")["role"] == "slave"

    shipped = (DOCKER / "redis/sentinel.conf").read_text()
    assert re.search(r"^sentinel monitor mymaster redis-master 6379 2$", shipped, re.M)
    sentinels = []
    for index in (1, 2, 3):
        base = tmp_path / f"sentinel-{index}"
        base.mkdir()
        # Only the master's address differs from the container.
        (base / "sentinel.conf").write_text(
            shipped.replace(
                "sentinel monitor mymaster redis-master 6379 2",
                f"sentinel monitor mymaster 127.0.0.1 {primary.port} 2",
            ).replace("dir /tmp", f"dir {base}")
        )
        sentinel = start_redis(
            tmp_path,
            f"sentinel-{index}-run",
            "sentinel",
            env={"SENTINEL_CONF": str(base / "sentinel.conf")},
        )
        processes.append(sentinel.proc)
        sentinels.append(sentinel)
    client = sentinels[0].client()
    info = client.sentinel_master("mymaster")
    assert int(info["quorum"]) == 2
    assert int(info["port"]) == primary.port
    wait_until(
        lambda: client.execute_command("SENTINEL", "CKQUORUM", "mymaster").startswith(
            b"OK 3 usable"
        ),
        20,
        "three Sentinels to see each other",
    )

    # The master dies: two Sentinels agree and promote the replica.
    stop_process(primary.proc)
    wait_until(
        lambda: (
            client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")[1]
            == str(replica.port).encode()
        ),
        40,
        "the failover to the replica",
    )
    promoted = replica.client()
    wait_until(lambda: promoted.info("replication")["role"] == "master", 10, "promotion")
    assert promoted.get("session") == b"kept"
    promoted.set("after-failover", "writable")
