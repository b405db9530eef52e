"""docker/compose/docker-compose.prod.yml, checked by docker-compose itself and by assertion.

`docker-compose config` (Debian's docker-compose 1.29, which validates against the Compose
Specification; there is no Docker engine here) must accept the default stack and every profile
combination. The resolved configuration is then checked for the hardening the production guide
promises: non-root, read-only root filesystems, no capabilities, no-new-privileges, only 80/443
published, an internal backend network, health checks, restart policies, resource limits, log
rotation, secrets as files and nothing secret in the environment.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DOCKER, ROOT, SCRIPTS, SECRET_NAMES, read_secret, run, tool

COMPOSE = Path("docker/compose/docker-compose.prod.yml")
PROFILE_SETS = (
    (),
    ("with-replica",),
    ("with-ha",),
    ("backup",),
    ("with-replica", "with-ha"),
    ("with-replica", "with-ha", "backup"),
)
DEFAULT_SERVICES = {
    "init-permissions",
    "timescaledb-primary",
    "pgbouncer",
    "redis-master",
    "migrate",
    "api",
    "api-server",
    "collector",
    "nginx",
    "grafana",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
}
PROFILED = {
    "timescaledb-replica": "with-replica",
    "redis-replica": "with-ha",
    "redis-sentinel-1": "with-ha",
    "redis-sentinel-2": "with-ha",
    "redis-sentinel-3": "with-ha",
    "backup": "backup",
    "backup-scheduler": "backup",
}
ONE_SHOT = {"init-permissions", "migrate", "backup"}
CONTAINER_NAMES = {
    "timescaledb-primary": "llm-observatory-db-primary",
    "redis-master": "llm-observatory-redis-master",
    "nginx": "llm-observatory-nginx",
    "api": "llm-observatory-api",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, generated_secrets: Path) -> Path:
    """A checkout as the Quick Start leaves it: secrets generated, .env.production copied."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(DOCKER, root / "docker")
    shutil.copytree(SCRIPTS, root / "scripts")
    shutil.copyfile(ROOT / "Dockerfile", root / "Dockerfile")
    shutil.copytree(generated_secrets, root / "secrets")
    shutil.copyfile(DOCKER / ".env.production.example", root / ".env.production")
    return root


def compose_config(project: Path, profiles: tuple[str, ...]) -> dict[str, Any]:
    args = [tool("docker-compose"), "-f", str(COMPOSE)]
    for profile in profiles:
        args += ["--profile", profile]
    proc = run([*args, "config"], cwd=project, env={"PATH": "/usr/bin:/bin"})
    assert "WARNING" not in proc.stderr, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def config(project: Path) -> dict[str, Any]:
    return compose_config(project, ())


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p) or "default")
def test_docker_compose_accepts_every_profile_combination(
    project: Path, profiles: tuple[str, ...]
) -> None:
    config = compose_config(project, profiles)
    services = config["services"]
    assert set(services) >= DEFAULT_SERVICES
    for name, profile in PROFILED.items():
        assert services[name]["profiles"] == [profile], name
    for name in DEFAULT_SERVICES:
        assert "profiles" not in services[name], name


def test_services_and_container_names_of_the_guide(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == DEFAULT_SERVICES | set(PROFILED)
    for service, container in CONTAINER_NAMES.items():
        assert services[service]["container_name"] == container
    # api-server is scaled with --scale, so it must not have a fixed container name.
    assert "container_name" not in services["api-server"]
    assert "container_name" not in services["collector"]
    assert services["api-server"]["deploy"]["replicas"] == 2
    for name in ("api-server", "collector"):
        update = services[name]["deploy"]["update_config"]
        assert update["order"] == "start-first"
        assert update["failure_action"] == "rollback"
    assert services["timescaledb-primary"]["environment"]["POSTGRES_DB"] == "llm_observatory"
    assert services["api"]["environment"]["OBSERVATORY_ROLE"] == "api"
    assert services["api-server"]["environment"]["OBSERVATORY_ROLE"] == "api"
    assert services["collector"]["environment"]["OBSERVATORY_ROLE"] == "collector"
    assert services["timescaledb-replica"]["command"] == ["replica"]
    assert services["timescaledb-replica"]["environment"]["PRIMARY_HOST"] == "timescaledb-primary"


def test_every_long_running_service_is_hardened(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name == "init-permissions":
            continue
        user = str(service.get("user", ""))
        assert re.fullmatch(r"[1-9]\d*:\d+", user), f"{name}: user {user!r}"
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["cpus"], name
        assert service.get("pids_limit"), name
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
        else:
            assert service["restart"] in ("unless-stopped", "always"), name
            if name != "backup-scheduler":
                check = service.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name}: no health check"
        for mount in service.get("tmpfs", []):
            assert mount.startswith("/"), name


def test_the_only_root_container_is_a_networkless_one_shot(config: dict[str, Any]) -> None:
    init = config["services"]["init-permissions"]
    assert init["user"] == "0:0"
    assert init["network_mode"] == "none"
    assert init["cap_drop"] == ["ALL"]
    assert set(init["cap_add"]) == {"CHOWN", "FOWNER", "DAC_OVERRIDE"}
    assert init["read_only"] is True and init["restart"] == "no"
    assert "no-new-privileges:true" in init["security_opt"]


def test_only_nginx_publishes_ports_80_and_443(config: dict[str, Any]) -> None:
    published = {
        name: service["ports"] for name, service in config["services"].items() if "ports" in service
    }
    assert set(published) == {"nginx"}
    ports = {(int(p["published"]), int(p["target"])) for p in published["nginx"]}
    assert ports == {(80, 8080), (443, 8443)}
    for name, service in config["services"].items():
        assert "expose" not in service or name != "nginx"
        assert service.get("network_mode") in (None, "none"), name


def test_networks_keep_the_backend_internal(config: dict[str, Any]) -> None:
    networks = config["networks"]
    assert networks["backend"]["internal"] is True
    assert networks.get("frontend", {}).get("internal") in (None, False)
    for name, service in config["services"].items():
        attached = set(service.get("networks", {}))
        if name == "init-permissions":
            assert not attached
            continue
        assert "backend" in attached, name
        if name != "nginx":
            assert "frontend" not in attached, f"{name} must not be on the public network"
    egress = {n for n, s in config["services"].items() if "egress" in s.get("networks", {})}
    assert egress == {"timescaledb-primary", "alertmanager", "backup", "backup-scheduler"}
    subnet = networks["backend"]["ipam"]["config"][0]["subnet"]
    for name in ("api", "api-server", "collector"):
        env = config["services"][name]["environment"]
        assert env["OBSERVATORY_TRUSTED_PROXIES"] == subnet


def test_secrets_are_files_and_never_in_the_environment(
    config: dict[str, Any], project: Path
) -> None:
    defined = config["secrets"]
    for name in SECRET_NAMES:
        assert Path(defined[name]["file"]) == project / "secrets" / f"{name}.txt", name
    assert Path(defined["postgres_tls_key"]["file"]) == project / "secrets/tls/server.key"
    values = {read_secret(project / "secrets", n) for n in SECRET_NAMES}
    app_password = re.search(
        r"observatory:([^@]+)@", read_secret(project / "secrets", "database_url")
    )
    assert app_password is not None
    values.add(app_password.group(1))
    rendered = yaml.safe_dump(config)
    for value in values:
        if not value.startswith("CHANGE-ME"):
            assert value not in rendered
    for name in ("api", "api-server", "collector", "migrate"):
        service = config["services"][name]
        env = service["environment"]
        for setting in (
            "DATABASE_URL",
            "DATABASE_READ_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "INITIAL_ADMIN_KEY",
        ):
            mounted = env[f"OBSERVATORY_{setting}_FILE"]
            assert mounted.startswith("/run/secrets/")
            assert mounted.removeprefix("/run/secrets/") in {
                s["source"] for s in service["secrets"]
            }
            assert f"OBSERVATORY_{setting}" not in env
        assert env["OBSERVATORY_AUTO_MIGRATE"] == "false"
    grafana = config["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    assert {s["source"] for s in grafana["secrets"]} >= {
        "grafana_admin_password",
        "grafana_db_password",
    }
    alertmanager = {s["source"] for s in config["services"]["alertmanager"]["secrets"]}
    assert alertmanager == {"smtp_password", "slack_webhook_url", "pagerduty_routing_key"}
    exporter = config["services"]["postgres-exporter"]["environment"]
    assert exporter["DATA_SOURCE_USER"] == "grafana_reader"
    assert exporter["DATA_SOURCE_PASS_FILE"] == "/run/secrets/grafana_db_password"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes."""
    result = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # docker-compose 1.29 prints "source:target[:mode]"
            source, target = volume.split(":")[:2]
            result[target] = source
        else:
            result[volume["target"]] = str(volume.get("source", ""))
    return result


def test_configuration_files_are_mounted_where_the_programs_read_them(
    config: dict[str, Any], project: Path
) -> None:
    services = config["services"]
    docker = project / "docker"
    expected = {
        "timescaledb-primary": {
            "/etc/postgresql/postgresql.conf": docker / "postgresql.prod.conf",
            "/etc/postgresql/pg_hba.conf": docker / "postgresql.hba.conf",
            "/etc/pgbackrest/pgbackrest.conf": docker / "pgbackrest/pgbackrest.conf",
            "/usr/local/bin/backup.sh": project / "scripts/backup.sh",
        },
        "timescaledb-replica": {
            "/etc/postgresql/postgresql.conf": docker / "postgresql.replica.conf",
        },
        "redis-master": {"/usr/local/etc/redis/redis.conf": docker / "redis.prod.conf"},
        "redis-sentinel-1": {"/usr/local/etc/redis/sentinel.conf": docker / "redis/sentinel.conf"},
        "pgbouncer": {"/etc/pgbouncer/pgbouncer.ini": docker / "pgbouncer/pgbouncer.ini"},
        "nginx": {
            "/etc/nginx/nginx.conf": docker / "nginx/nginx.prod.conf",
            "/etc/nginx/ssl-params.conf": docker / "nginx/ssl-params.conf",
            "/etc/nginx/conf.d": docker / "nginx/conf.d",
            "/etc/nginx/includes": docker / "nginx/includes",
            "/etc/nginx/certs": docker / "certs/nginx",
        },
        "prometheus": {
            "/etc/prometheus/prometheus.yml": docker / "prometheus/prometheus.yml",
            "/etc/prometheus/rules": docker / "prometheus/rules",
        },
        "alertmanager": {
            "/etc/alertmanager/alertmanager.yml": docker / "alertmanager/alertmanager.yml",
        },
        "grafana": {
            "/etc/grafana/provisioning": docker / "grafana/provisioning",
            "/var/lib/grafana/dashboards": docker / "grafana/dashboards",
        },
        "backup-scheduler": {
            "/etc/pgbackrest/pgbackrest.conf": docker / "pgbackrest/pgbackrest.conf",
            "/usr/local/bin/backup.sh": project / "scripts/backup.sh",
        },
    }
    for service, files in expected.items():
        actual = mounts(services[service])
        for target, source in files.items():
            assert actual.get(target) == str(source), f"{service}: {target}"
            # Every configuration file a container reads exists in the repository.
            assert (ROOT / source.relative_to(project)).exists(), source
    # The backup metrics reach Prometheus through node-exporter's textfile collector.
    textfile = mounts(services["node-exporter"])["/var/lib/node_exporter/textfile"]
    assert mounts(services["backup-scheduler"])["/var/lib/node_exporter/textfile"] == textfile
    assert services["backup-scheduler"]["environment"]["BACKUP_METRICS_DIR"] == (
        "/var/lib/node_exporter/textfile"
    )
    # pgBackRest in the backup container works on the primary's data directory and socket.
    primary = mounts(services["timescaledb-primary"])
    backup = mounts(services["backup-scheduler"])
    for target in ("/var/lib/postgresql/data", "/var/run/postgresql", "/var/lib/pgbackrest"):
        assert backup[target] == primary[target], target
    assert services["backup"]["command"] == ["run"]
    assert services["backup-scheduler"]["command"] == ["schedule"]
    assert services["backup"]["build"]["target"] == "backup"


def test_data_directories_of_the_quick_start(config: dict[str, Any]) -> None:
    """sudo mkdir -p /var/lib/llm-observatory/{timescaledb-primary,redis-master,grafana,backups}"""
    services = config["services"]
    assert mounts(services["timescaledb-primary"])["/var/lib/postgresql/data"] == (
        "/var/lib/llm-observatory/timescaledb-primary"
    )
    assert mounts(services["redis-master"])["/data"] == "/var/lib/llm-observatory/redis-master"
    assert mounts(services["grafana"])["/var/lib/grafana"] == "/var/lib/llm-observatory/grafana"
    assert mounts(services["backup-scheduler"])["/var/lib/pgbackrest"] == (
        "/var/lib/llm-observatory/backups"
    )
    assert mounts(services["init-permissions"])["/data"] == "/var/lib/llm-observatory"


def test_upstreams_and_scrape_targets_match_services(config: dict[str, Any]) -> None:
    services = config["services"]
    upstreams = (DOCKER / "nginx/includes/upstreams.conf").read_text()
    for host in re.findall(r"^\s*server ([\w-]+):\d+", upstreams, re.M):
        assert host in services, host
    for host in ("timescaledb-primary", "timescaledb-replica"):
        assert f"host={host} port=5432" in (DOCKER / "pgbouncer/pgbouncer.ini").read_text()
        assert host in services
    sentinel = (DOCKER / "redis/sentinel.conf").read_text()
    assert re.search(r"^sentinel monitor mymaster redis-master 6379 2$", sentinel, re.M)
    replica_conf = (DOCKER / "postgresql.replica.conf").read_text()
    assert "host=timescaledb-primary port=5432 user=replicator" in replica_conf
    # Ports the monitoring configuration scrapes (docs/MONITORING.md).
    for host, port in (
        ("api", "8000"),
        ("api-server", "8000"),
        ("collector", "8000"),
        ("node-exporter", "9100"),
        ("postgres-exporter", "9187"),
        ("redis-exporter", "9121"),
        ("alertmanager", "9093"),
        ("prometheus", "9090"),
    ):
        test = " ".join(str(part) for part in services[host]["healthcheck"]["test"])
        assert f":{port}/" in test, host


def test_env_example_documents_every_variable() -> None:
    text = (DOCKER / ".env.production.example").read_text()
    lines = text.splitlines()
    variables = []
    for index, line in enumerate(lines):
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            variables.append(match.group(1))
            assert lines[index - 1].startswith("#"), f"{match.group(1)} has no comment above it"
            assert "${" not in match.group(2)
    assert len(variables) == len(set(variables))
    compose = (DOCKER / "compose/docker-compose.prod.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)(?::-[^}]*)?\}", compose))
    assert used <= set(variables), used - set(variables)
    for name in ("DB_SHARED_BUFFERS", "DB_EFFECTIVE_CACHE_SIZE"):
        assert name in variables
    entrypoint = (DOCKER / "compose/scripts/db-entrypoint.sh").read_text()
    for name in [v for v in variables if v.startswith("DB_") and "LIMIT" not in v]:
        assert f"add_tuning {name} " in entrypoint, name
