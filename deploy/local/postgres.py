"""PostgreSQL servers of the loopback stack: their files, SQL as the superuser, a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from deploy.local.procs import Proc, StackError

DB = "llm_observatory"


def pg_bin() -> Path:
    """The newest installed PostgreSQL server binaries (Debian: /usr/lib/postgresql/<v>/bin)."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*") if (p / "bin" / "initdb").exists()), key=lambda p: int(p.name)
    )
    if not versions:
        raise StackError(
            "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql-15)"
        )
    return versions[-1] / "bin"


@dataclass
class PgNode:
    """One PostgreSQL server of the stack (the service name stays; its role can change)."""

    name: str
    base: Path
    port: int

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"

    @property
    def conf(self) -> Path:
        return self.base / "postgresql.conf"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def superuser_dsn(self, db: str = DB) -> str:
        """The superuser over the local socket (trust), as `docker exec ... psql -U postgres`."""
        return (
            f"host={self.socket_dir} port={self.port} user=postgres dbname={db} connect_timeout=3"
        )

    def sql(
        self, query: str, db: str = DB, params: tuple[Any, ...] | None = None
    ) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.superuser_dsn(db), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def running(self) -> bool:
        try:
            self.sql("SELECT 1", "postgres")
        except psycopg.Error:
            return False
        return True

    def in_recovery(self) -> bool:
        return bool(self.sql("SELECT pg_is_in_recovery()", "postgres")[0][0])


def kill_all(postmaster: Proc, data: Path) -> None:
    """SIGKILL to the postmaster and every child at once (a crash: no shutdown checkpoint, no
    WAL sent after this moment), then remove the shared memory nobody will release."""
    children = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == postmaster.pid
    ]
    postmaster.send(signal.SIGSTOP)  # it cannot react while its children die
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    postmaster.send(signal.SIGKILL)
    postmaster.wait(10)
    _release_shared_memory(data)


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _release_shared_memory(data: Path) -> None:
    """After a SIGKILL nobody removes the postmaster's System V segment: remove it."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return
    if len(lines) >= 7 and len(lines[6].split()) == 2:
        shmid = lines[6].split()[1]
        subprocess.run(["ipcrm", "-m", shmid], capture_output=True, check=False)
