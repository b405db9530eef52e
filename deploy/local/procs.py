"""Processes of the loopback stack: start, find again by pid, stop; free ports; bounded waits."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class StackError(RuntimeError):
    """Something in the stack did not start or did not do what it should, with the evidence."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until every one is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``predicate`` until it returns something truthy; raise StackError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def postgres_user() -> str | None:
    """The account PostgreSQL and PgBouncer run as (they refuse root); None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "the postgres system user is missing (apt-get install postgresql-15)"
        ) from None
    return "postgres"


def chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    for item in [path, *path.rglob("*")]:
        shutil.chown(item, user, user)


def run(
    cmd: list[str],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (as ``user`` when given) with its output captured."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user, group=user, extra_groups=[])
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise StackError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def _start_time(pid: int, zombie_too: bool = False) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a process apart from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z" and not zombie_too:  # a zombie has exited
        return None
    return int(fields[19])


@dataclass
class Proc:
    """One long-running program of the stack."""

    name: str
    pid: int
    started: int
    log: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "started": self.started, "log": self.log}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proc:
        return cls(data["name"], int(data["pid"]), int(data["started"]), data["log"])

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _start_time(self.pid) == self.started

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (reaped when this process started it)."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        # Until the pid is gone altogether: PostgreSQL refuses to start while the pid in its
        # lock file exists, even as a zombie that nobody has reaped yet.
        deadline = time.monotonic() + timeout
        while _start_time(self.pid, zombie_too=True) == self.started:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """``sig``, then SIGKILL if it has not exited within ``timeout``."""
        self.send(sig)
        if not self.wait(timeout):
            self.send(signal.SIGKILL)
            self.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def spawn(
    name: str,
    cmd: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start a program in its own session (it outlives `python -m deploy.local up`)."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user, group=user, extra_groups=[])
    with open(log, "ab") as handle:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            **kwargs,
        )
    started = _start_time(popen.pid) or 0
    return Proc(name, popen.pid, started, str(log), popen)
