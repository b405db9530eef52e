"""Every path and command the production guide (and our own production docs) name exists.

The guide is ../shared/PRODUCTION_README.md relative to the repository root (CI clones the
repository with shared/ beside it), falling back to the copy in docs/reference/. For the guide
and for docs/PRODUCTION*.md, SECRETS_MANAGEMENT.md, SCALING_GUIDE.md and OPERATIONS_MANUAL.md:
links resolve (anchors included), repository paths exist, secret files are ones
generate-secrets.sh writes, `docker compose` commands name real files, profiles, services and
scalable services, `docker exec/logs` name real containers, script options exist, and settings
named are ones something reads.
"""

from __future__ import annotations

import glob
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DOCKER, ROOT, SECRET_NAMES

SHARED_GUIDE = ROOT.parent / "shared" / "PRODUCTION_README.md"
GUIDE_COPY = ROOT / "docs" / "reference" / "PRODUCTION_README.md"
OUR_DOCS = (
    "PRODUCTION.md",
    "PRODUCTION_QUICK_START.md",
    "PRODUCTION_DEPLOYMENT.md",
    "PRODUCTION_CHECKLIST.md",
    "SECRETS_MANAGEMENT.md",
    "SCALING_GUIDE.md",
    "OPERATIONS_MANUAL.md",
)
COMPOSE_FILE = "docker/compose/docker-compose.prod.yml"
BACKUP_COMMANDS = {"run", "schedule", "list", "restore", "verify", "check", "restore-test"}
# Files an operator supplies (the guide copies the certificate there).
OPERATOR_FILES = {"docker/certs/nginx/server.crt", "docker/certs/nginx/server.key"}
SETTING_PREFIXES = ("OBSERVATORY_", "GF_", "DB_", "BACKUP_", "STACK_")


def guide_path() -> Path:
    if SHARED_GUIDE.exists():
        return SHARED_GUIDE
    if GUIDE_COPY.exists():
        return GUIDE_COPY
    pytest.fail(f"neither {SHARED_GUIDE} nor {GUIDE_COPY} exists")


def documents() -> list[tuple[str, Path, Path]]:
    """(id, file, directory its relative links start from)."""
    docs = [("guide", guide_path(), ROOT)]  # the guide is the repository's README
    docs += [(name, ROOT / "docs" / name, ROOT / "docs") for name in OUR_DOCS]
    return docs


DOCS = documents()


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / COMPOSE_FILE).read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def container_names() -> set[str]:
    return {s["container_name"] for s in services().values() if "container_name" in s}


def profiles() -> set[str]:
    return {p for s in services().values() for p in s.get("profiles", [])}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+\s+(.+)$", path.read_text(), re.M)}


def code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks, with backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    return lines


def commands(text: str) -> list[str]:
    """Shell commands in code blocks and in inline code spans."""
    found = [line for line in code_lines(text) if not line.startswith("#")]
    found += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return found


def split(command: str) -> list[str]:
    command = re.split(r"\s(?:\||&&|;|>|2>&1)\s?", command)[0]
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return command.split()


@pytest.mark.parametrize(("name", "path", "base"), DOCS, ids=[d[0] for d in DOCS])
def test_links_resolve(name: str, path: Path, base: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (base / file_part) if file_part else path
        assert linked.exists(), f"{name}: link to {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{name}: no heading for #{anchor} in {linked.name}"


@pytest.mark.parametrize(("name", "path", "base"), DOCS, ids=[d[0] for d in DOCS])
def test_repository_paths_exist(name: str, path: Path, base: Path) -> None:
    text = path.read_text()
    generated = {f"secrets/{n}.txt" for n in SECRET_NAMES} | {
        f"secrets/tls/{n}" for n in ("ca.crt", "ca.key", "server.crt", "server.key")
    }
    candidates = set(
        re.findall(r"(?<![\w/.$-])(?:\./)?((?:docker|scripts|docs|secrets)/[\w.\-/*{}<>]*)", text)
    )
    assert candidates, f"{name} names no repository path?"
    for raw in candidates:
        rel = raw.rstrip(".,:;)")
        if "<" in rel or "{" in rel:
            continue
        if rel.startswith("secrets/"):
            if (
                "*" in rel
                or rel in ("secrets/", "secrets/tls/")
                or rel.startswith("secrets/backup-")
            ):
                continue
            assert rel.removesuffix(".previous").removesuffix(".new") in generated, (
                f"{name}: {rel} is not written by generate-secrets.sh"
            )
            continue
        if rel in OPERATOR_FILES:
            assert (ROOT / rel).parent.is_dir(), rel
            continue
        if "*" in rel:
            assert glob.glob(str(ROOT / rel), recursive=True), f"{name}: nothing matches {rel}"
            continue
        assert (ROOT / rel).exists(), f"{name}: {rel} does not exist"


def check_compose(name: str, tokens: list[str]) -> None:
    """tokens start after `docker compose` (or the `dc` alias)."""
    index = 0
    active: set[str] = set()
    while index < len(tokens) and tokens[index].startswith("-"):
        option = tokens[index]
        if option == "-f":
            assert tokens[index + 1] == COMPOSE_FILE, f"{name}: {tokens}"
            assert (ROOT / tokens[index + 1]).exists()
            index += 2
        elif option == "--profile":
            assert tokens[index + 1] in profiles(), f"{name}: unknown profile {tokens[index + 1]}"
            active.add(tokens[index + 1])
            index += 2
        elif option == "--env-file":
            index += 2
        else:
            raise AssertionError(f"{name}: unexpected compose option {option} in {tokens}")
    if index >= len(tokens):
        return
    sub, rest = tokens[index], tokens[index + 1 :]
    if sub in ("version", "...") or sub.startswith("<"):
        return
    known = {
        "up",
        "restart",
        "logs",
        "ps",
        "stop",
        "start",
        "pull",
        "build",
        "run",
        "exec",
        "config",
        "down",
        "rm",
        "create",
    }
    assert sub in known, f"{name}: docker compose {sub}?"
    positional: list[str] = []
    skip = False
    for i, token in enumerate(rest):
        if skip:
            skip = False
            continue
        if token.startswith("--scale"):
            value = token.split("=", 1)[1] if "=" in token else rest[i + 1]
            skip = "=" not in token
            service = value.split("=")[0]
            assert service in services(), f"{name}: --scale {service}"
            assert "container_name" not in services()[service], f"{name}: {service} cannot scale"
            continue
        if token in ("--tail", "--filter", "-e", "--entrypoint", "--format", "--timeout", "-t"):
            skip = True
            continue
        if token.startswith("-") or token.startswith(("<", "$")) or token == "...":
            continue
        positional.append(token)
        if sub in ("run", "exec"):
            break
    if sub in ("run", "exec") and positional:
        service = positional[0]
        assert service in services(), f"{name}: no service {service}"
        after = rest[rest.index(service) + 1 :]
        if service == "backup" and after:
            assert after[0] in BACKUP_COMMANDS, f"{name}: backup.sh {after[0]}?"
        return
    if sub == "config":
        return
    for service in positional:
        assert service in services(), f"{name}: no service {service} ({tokens})"
        wanted = services()[service].get("profiles", [])
        if wanted and sub not in ("run",):
            assert set(wanted) & active, f"{name}: {service} needs --profile {wanted[0]}"


def check_docker(name: str, tokens: list[str]) -> None:
    """tokens start after `docker`."""
    if not tokens or tokens[0] not in ("exec", "logs", "inspect", "restart", "stop", "start"):
        return
    args = tokens[1:]
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in ("-e", "-u", "-w", "--user") else 1
    if index < len(args):
        container = args[index]
        if container.startswith(("$", "<")) or container == "-q":
            return
        assert container in container_names(), f"{name}: no container {container}"


def check_script(name: str, tokens: list[str]) -> None:
    script = ROOT / tokens[0].removeprefix("./")
    assert script.exists(), f"{name}: {tokens[0]}"
    text = script.read_text()
    for token in tokens[1:]:
        if token.startswith("--"):
            option = token.split("=")[0]
            assert option in text, f"{name}: {tokens[0]} has no option {option}"


@pytest.mark.parametrize(("name", "path", "base"), DOCS, ids=[d[0] for d in DOCS])
def test_commands_name_real_services_containers_and_options(
    name: str, path: Path, base: Path
) -> None:
    text = path.read_text()
    alias_dc = "alias dc=" in text or "`dc` =" in text or "`dc` stands for" in text
    checked = 0
    for command in commands(text):
        for part in re.split(r"\s*(?:&&|\|\||;)\s*", command):
            tokens = split(part)
            while tokens and tokens[0] in ("sudo", "time", "env"):
                tokens = tokens[1:]
            if len(tokens) >= 2 and tokens[0] == "docker" and tokens[1] == "compose":
                check_compose(name, tokens[2:])
                checked += 1
            elif (tokens and tokens[0] == "docker-compose") or (
                tokens and tokens[0] == "dc" and alias_dc
            ):
                check_compose(name, tokens[1:])
                checked += 1
            elif tokens and tokens[0] == "docker":
                check_docker(name, tokens[1:])
                checked += 1
            elif tokens and re.match(r"^(\./)?scripts/[\w-]+\.sh$", tokens[0]):
                check_script(name, tokens)
                checked += 1
    assert checked > 0, f"{name}: no commands found"


@cache
def known_settings() -> set[str]:
    known = set(
        re.findall(r"^([A-Z][A-Z0-9_]*)=", (DOCKER / ".env.production.example").read_text(), re.M)
    )
    compose_text = (ROOT / COMPOSE_FILE).read_text()
    known |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    for service in services().values():
        env = service.get("environment") or {}
        known |= set(env if isinstance(env, dict) else [e.split("=")[0] for e in env])
    known |= set(
        re.findall(r"`(OBSERVATORY_[A-Z0-9_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    known |= {f"{name}_FILE" for name in known if name.startswith("OBSERVATORY_")}
    for script in [*DOCKER.rglob("*.sh")]:
        known |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script.read_text()))
    backup = ROOT / "scripts" / "backup.sh"
    if backup.exists():
        known |= set(re.findall(r"\b(BACKUP_[A-Z0-9_]+)", backup.read_text()))
    return known


@pytest.mark.parametrize(("name", "path", "base"), DOCS, ids=[d[0] for d in DOCS])
def test_settings_named_are_read_by_something(name: str, path: Path, base: Path) -> None:
    text = path.read_text()
    named = {
        word
        for word in re.findall(r"\b([A-Z][A-Z0-9_]{3,})\b", text)
        if word.startswith(SETTING_PREFIXES) and not word.endswith("_")
    }
    unknown = sorted(named - known_settings())
    assert not unknown, f"{name}: {unknown}"


def test_guide_database_container_names_and_shared_copy() -> None:
    guide = guide_path().read_text()
    # psql -d llm_observatory in the guide: the database the stack creates.
    assert "-d llm_observatory" in guide
    primary = services()["timescaledb-primary"]
    assert compose()["x-timescaledb"]["environment"]["POSTGRES_DB"] == "llm_observatory"
    assert primary["container_name"] == "llm-observatory-db-primary"
    for container in re.findall(r"docker (?:exec|logs) (llm-observatory-[\w-]+)", guide):
        assert container in container_names(), container
    # The copy in docs/reference stays identical to the shared guide.
    if SHARED_GUIDE.exists():
        assert GUIDE_COPY.read_text() == SHARED_GUIDE.read_text(), (
            "docs/reference/PRODUCTION_README.md is stale: cp ../shared/PRODUCTION_README.md "
            "docs/reference/"
        )
    # Every file of the guide's "Configuration Files" list.
    for listed in re.findall(r"\*\*\[?(docker/[\w./-]+)", guide):
        assert (ROOT / listed).exists(), listed
