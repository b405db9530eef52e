"""Dockerfile: hadolint, structure, and the server run the way the image runs it.

There is no Docker engine here, so the image's runtime conditions are rebuilt with bubblewrap:
an unprivileged user (10001, the image's USER), the whole filesystem read-only except the data
directory (the volume) and /tmp (the tmpfs), the image's environment, and then /health/ready.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import (
    ROOT,
    VENV_BIN,
    GaveUp,
    free_port,
    private_tmpdir,
    run,
    tool,
    wait_until,
)

DOCKERFILE = ROOT / "Dockerfile"
UID = 10001


def stages() -> dict[str, str]:
    """stage name -> its instructions."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M | re.I)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_hadolint_is_clean() -> None:
    proc = run([tool("hadolint"), "--no-color", str(DOCKERFILE)], check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_multi_stage_non_root_with_health_check_and_no_secrets() -> None:
    found = stages()
    assert {"build", "runtime", "timescaledb", "backup", "pgbouncer"} <= set(found)
    for name in ("runtime", "timescaledb", "backup", "pgbouncer"):
        users = re.findall(r"^USER\s+(\S+)", found[name], re.M)
        if name == "backup":
            users = users or re.findall(r"^USER\s+(\S+)", found["timescaledb"], re.M)
        assert users, f"{name} has no USER"
        assert not users[-1].startswith(("0", "root")), f"{name} runs as {users[-1]}"
    runtime = found["runtime"]
    assert "HEALTHCHECK" in runtime and "/health/ready" in runtime
    assert re.search(r"^ENTRYPOINT \[\"observatory\"\]", runtime, re.M)
    assert "OBSERVATORY_ROLE=api" in runtime
    # The runtime stage gets the virtualenv from the build stage, not the compilers.
    assert "COPY --from=build /opt/observatory /opt/observatory" in runtime
    assert "pip install" not in runtime
    text = DOCKERFILE.read_text()
    for line in text.splitlines():
        if re.match(r"^\s*(ENV|ARG)\b", line):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*=\S", line, re.I), line
    assert "COPY secrets" not in text and "COPY .env" not in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in ("secrets/", ".env.*", "**/.venv", "**/.git", "docker/certs/", "**/*.key"):
        assert pattern in ignored, pattern
    # What the build copies is really in the build context.
    for source in re.findall(r"^COPY (?:--chmod=\S+ )?(?!--from)(\S+) ", text, re.M):
        assert (ROOT / source).exists(), source


def image_env(data_dir: Path, port: int, role: str) -> dict[str, str]:
    """The runtime stage's ENV, with the port and data directory of this test."""
    env: dict[str, str] = {}
    block = re.search(r"^ENV (.*?)(?=^\S)", stages()["runtime"], re.M | re.S)
    assert block
    for name, value in re.findall(r"(\w+)=(\S+)", block.group(1)):
        env[name] = value
    env["PATH"] = f"{VENV_BIN}:/usr/bin:/bin"
    env["OBSERVATORY_DATA_DIR"] = str(data_dir)
    env["OBSERVATORY_HOST"] = "127.0.0.1"
    env["OBSERVATORY_PORT"] = str(port)
    env["OBSERVATORY_ROLE"] = role
    env["HOME"] = str(data_dir)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    return env


def interpreter_binds() -> list[str]:
    """Make the Python installation readable to the unprivileged user, as it is in the image.

    On a developer machine the virtualenv's interpreter may live under a private home directory
    (pyenv in /root); the image has it in /usr/local. Only that installation is exposed, read-only.
    """
    prefix = Path(sys.base_prefix).resolve()
    chain = [p for p in reversed(prefix.parents) if p != Path("/")]
    for index, parent in enumerate(chain):
        if not parent.stat().st_mode & 0o001:
            binds = ["--perms", "0755", "--tmpfs", str(parent)]
            for inner in chain[index + 1 :]:
                binds += ["--perms", "0755", "--dir", str(inner)]
            return [*binds, "--ro-bind", str(prefix), str(prefix)]
    return []


def checkout_binds() -> list[str]:
    """A checkout (or its virtualenv) under /tmp would vanish under the fresh /tmp tmpfs, as CI's
    clone may live there: bind it back, read-only, as the image's /app is."""
    binds: list[str] = []
    bound: list[Path] = []
    for path in (Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()):
        if not path.is_relative_to("/tmp") or any(path.is_relative_to(b) for b in bound):
            continue
        # bwrap would create the directories between /tmp and the bind as 0700 (mktemp -d's
        # clones live there): create them readable first.
        for parent in reversed(path.parents):
            if parent.is_relative_to("/tmp") and parent != Path("/tmp"):
                binds += ["--perms", "0755", "--dir", str(parent)]
        binds += ["--ro-bind", str(path), str(path)]
        bound.append(path)
    return binds


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found.append(int(child))
            found.extend(descendants(int(child)))
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) of process group ``pgid``."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat_file.parent.name))
    return members


def stop_sandbox(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop bwrap and every process started in the sandbox: SIGTERM, SIGKILL after ``timeout``.

    Stopping bwrap alone is not enough: it kills its child through the parent-death signal
    (--die-with-parent), but setpriv's change of user clears that signal, so the server would
    outlive the sandbox. Every process of the sandbox is in the process group bwrap leads
    (start_new_session), also once bwrap has exited and they have a new parent.
    """
    pgid = proc.pid
    for sig, wait_seconds in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            proc.poll()  # reap bwrap, our child
            if not group_members(pgid):
                return
            time.sleep(0.1)
    raise AssertionError(f"processes of the sandbox survived SIGKILL: {group_members(pgid)}")


@pytest.mark.parametrize("role", ["api", "collector"])
def test_server_runs_unprivileged_on_a_read_only_filesystem(role: str) -> None:
    if os.getuid() != 0:
        pytest.fail("this test needs root to switch to the image's user (CI runs as root)")
    cli = VENV_BIN / "observatory"
    if not cli.exists():
        pytest.fail(f"{cli} is missing: install the project (make venv)")
    data = private_tmpdir("obs-deploy-image-data-")
    os.chown(data, UID, UID)
    data.chmod(0o750)
    port = free_port()
    log_path = private_tmpdir("obs-deploy-image-log-") / "server.log"
    # The same limits as the container: read-only root, a tmpfs on /tmp, the data volume, and
    # the private /dev/shm Docker gives every container (the ingest worker processes' locks).
    command = [
        tool("bwrap"),
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        *checkout_binds(),
        "--bind",
        str(data),
        str(data),
        *interpreter_binds(),
        "--",
        tool("setpriv"),
        f"--reuid={UID}",
        f"--regid={UID}",
        "--clear-groups",
        "--no-new-privs",
        str(cli),
        "serve",
    ]
    with log_path.open("wb") as log:
        # Its own process group, so that teardown finds every process of the sandbox.
        proc = subprocess.Popen(
            command,
            env=image_env(data, port, role),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise GaveUp(f"server exited: {log_path.read_text()[-3000:]}")
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200

        try:
            wait_until(ready, 90, "/health/ready")
        except (AssertionError, GaveUp) as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-3000:]}") from exc
        server_pids = [
            pid
            for pid in descendants(proc.pid)
            if "observatory" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        ]
        assert server_pids, "no server process found under bwrap"
        for pid in server_pids:
            status = Path(f"/proc/{pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(UID)] * 4
            assert re.search(r"^CapEff:\s+0+$", status, re.M), "the server holds capabilities"
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=5)
        assert live.status_code == 200
        traces = httpx.get(f"http://127.0.0.1:{port}/api/v1/traces", timeout=5)
        if role == "collector":
            assert traces.status_code == 404
        else:
            assert traces.status_code in (401, 403)
        # Everything the server wrote is inside its data directory, owned by its user.
        written = list(data.rglob("*"))
        assert written, "the server wrote nothing to its data directory"
        assert {p.stat().st_uid for p in written} == {UID}
    finally:
        try:
            stop_sandbox(proc)
        finally:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(log_path.parent, ignore_errors=True)
