"""The shipped configuration files of docker/, rendered for the loopback stack.

Each file gets one explicit substitution table: what differs between a container and this
machine (host names become 127.0.0.1, fixed ports become free ones, container paths become
directories of the stack, memory sizes are scaled down for a small machine). Every entry must
match the shipped text, so a change to a file in docker/ that a table no longer fits stops the
stack with a clear message instead of silently running something else.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


class RenderError(RuntimeError):
    """A shipped file no longer contains the text a substitution expects."""


@dataclass(frozen=True)
class Sub:
    """Replace ``old`` (exact text of the shipped file) with ``new``; ``count`` = occurrences."""

    old: str
    new: str
    count: int = 1


def apply(text: str, subs: list[Sub], name: str) -> str:
    for sub in subs:
        found = text.count(sub.old)
        if found != sub.count:
            raise RenderError(
                f"{name}: expected {sub.count} occurrence(s) of {sub.old!r}, found {found}; "
                "update the substitution table in deploy/local/render.py"
            )
        text = text.replace(sub.old, sub.new)
    return text


def set_settings(text: str, settings: dict[str, str], name: str) -> str:
    """``key = value`` files (postgresql.conf): replace the value of each key, keep comments."""
    for key, value in settings.items():
        pattern = re.compile(rf"^({re.escape(key)}\s*=\s*)(?:'[^']*'|[^#\s]*)", re.M)

        def replace(match: re.Match[str], value: str = value) -> str:
            return match.group(1) + value

        text, found = pattern.subn(replace, text)
        if found != 1:
            raise RenderError(
                f"{name}: expected one `{key} = ...` line, found {found}; "
                "update the substitution table in deploy/local/render.py"
            )
    return text


def quote(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# ------------------------------------------------------------------------------------------ nginx


@dataclass(frozen=True)
class NginxPorts:
    http: int
    https: int
    api: int  # service `api` (API Server 1)
    api_server: int  # service `api-server` (API Server 2)
    collector: int
    grafana: int  # nothing listens there: Grafana is not part of the HA stack


# The two site names of conf.d/llm-observatory.conf on this machine. The API site (OTLP ingest
# to the collectors, REST API) answers https://127.0.0.1:<port>/, the UI site (web UI and its
# API calls; it is nginx's default server) https://localhost:<port>/.
API_HOST = "127.0.0.1"
UI_HOST = "localhost"


def nginx_tables(target: Path, ports: NginxPorts) -> dict[str, list[Sub]]:
    """Substitution table per file of docker/nginx (relative path -> substitutions)."""
    return {
        "nginx.prod.conf": [
            # pid, temp paths and logs: the container's tmpfs and log volume.
            Sub("/tmp/", f"{target}/tmp/", count=6),  # noqa: S108 - the text being replaced
            Sub("/var/log/nginx/", f"{target}/logs/", count=2),
        ],
        "conf.d/llm-observatory.conf": [
            Sub("listen 8080 default_server;", f"listen 127.0.0.1:{ports.http} default_server;"),
            Sub(
                "listen 8443 ssl http2 default_server;",
                f"listen 127.0.0.1:{ports.https} ssl http2 default_server;",
            ),
            Sub("listen 8443 ssl http2;", f"listen 127.0.0.1:{ports.https} ssl http2;"),
            Sub("server_name observatory.yourdomain.com;", f"server_name {UI_HOST};"),
            Sub(
                "server_name api.observatory.yourdomain.com ~^api\\.;",
                f"server_name {API_HOST} ~^api\\.;",
            ),
            Sub("root /var/www/certbot;", f"root {target}/certbot;"),
        ],
        "includes/upstreams.conf": [
            Sub("server api:8000 ", f"server 127.0.0.1:{ports.api} "),
            Sub("server api-server:8000 ", f"server 127.0.0.1:{ports.api_server} ", count=2),
            Sub("server collector:8000 ", f"server 127.0.0.1:{ports.collector} "),
            Sub("server grafana:3000 ", f"server 127.0.0.1:{ports.grafana} "),
            # `resolve` re-resolves Docker service names (nginx >= 1.27.3; Debian 12 ships
            # 1.22); the servers are addresses here, so there is nothing to re-resolve.
            Sub(" resolve;", ";", count=5),
        ],
        # Certificate paths are relative to nginx.prod.conf (certs/server.crt, .key): the stack
        # puts its certificate there, nothing to substitute.
        "ssl-params.conf": [],
    }


def render_nginx(target: Path, ports: NginxPorts) -> None:
    """docker/nginx copied to ``target`` with the substitution tables applied."""
    shutil.copytree(DOCKER / "nginx", target)
    # `include mime.types;` is relative to the configuration directory, as in the image.
    shutil.copyfile("/etc/nginx/mime.types", target / "mime.types")
    for sub in ("logs", "tmp", "certs", "certbot"):
        (target / sub).mkdir(exist_ok=True)
    for relative, subs in nginx_tables(target, ports).items():
        path = target / relative
        path.write_text(apply(path.read_text(), subs, f"docker/nginx/{relative}"))


# ------------------------------------------------------------------------------------- PostgreSQL

# Memory settings of postgresql.prod.conf (32 GB) and postgresql.replica.conf (16 GB), scaled
# down for a test machine.
PG_MEMORY = {
    "shared_buffers": "32MB",
    "effective_cache_size": "128MB",
    "work_mem": "4MB",
    "maintenance_work_mem": "32MB",
    "autovacuum_work_mem": "16MB",
    "temp_buffers": "8MB",
    "wal_buffers": "1MB",
}


@dataclass(frozen=True)
class PgPaths:
    port: int
    base: Path  # the server's directory: socket, hba file
    cert: Path
    key: Path
    archive_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"


def pg_table(paths: PgPaths) -> dict[str, str]:
    return {
        "listen_addresses": quote("127.0.0.1"),
        "port": str(paths.port),
        "unix_socket_directories": quote(paths.socket_dir),
        "hba_file": quote(paths.base / "pg_hba.conf"),
        "ssl_cert_file": quote(paths.cert),
        "ssl_key_file": quote(paths.key),
        # pgBackRest's repository is not part of this stack (tests/deploy/test_backup.py runs
        # it): completed WAL segments are copied into a directory of the stack instead, so that
        # archiving succeeds and the server recycles its WAL as in production.
        "archive_command": quote(
            f"test ! -f {paths.archive_dir}/%f && cp %p {paths.archive_dir}/%f"
        ),
        **PG_MEMORY,
    }


def render_postgres_primary(paths: PgPaths) -> str:
    text = (DOCKER / "postgresql.prod.conf").read_text()
    return set_settings(text, pg_table(paths), "docker/postgresql.prod.conf")


def render_postgres_replica(paths: PgPaths, primary_port: int, passfile: Path) -> str:
    text = (DOCKER / "postgresql.replica.conf").read_text()
    text = set_settings(text, pg_table(paths), "docker/postgresql.replica.conf")
    return apply(
        text,
        [
            Sub("host=timescaledb-primary port=5432", f"host=127.0.0.1 port={primary_port}"),
            Sub("passfile=/var/run/postgresql/replication.pgpass", f"passfile={passfile}"),
        ],
        "docker/postgresql.replica.conf",
    )


def render_hba() -> str:
    """pg_hba.conf as shipped (loopback is one of the `samenet` networks)."""
    return (DOCKER / "postgresql.hba.conf").read_text()


# --------------------------------------------------------------------------------------- PgBouncer


def render_pgbouncer(
    *, port: int, primary_port: int, replica_port: int, auth_file: Path, cert: Path, key: Path
) -> str:
    text = (DOCKER / "pgbouncer/pgbouncer.ini").read_text()
    return apply(
        text,
        [
            Sub("host=timescaledb-primary port=5432", f"host=127.0.0.1 port={primary_port}"),
            Sub("host=timescaledb-replica port=5432", f"host=127.0.0.1 port={replica_port}"),
            Sub("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1"),
            Sub("listen_port = 6432", f"listen_port = {port}"),
            Sub("/run/pgbouncer/userlist.txt", str(auth_file)),
            Sub("/run/secrets/postgres_tls_cert", str(cert)),
            Sub("/run/secrets/postgres_tls_key", str(key)),
        ],
        "docker/pgbouncer/pgbouncer.ini",
    )


# ------------------------------------------------------------------------------- Redis, Sentinel


def render_redis(port: int) -> str:
    """redis.prod.conf; redis-entrypoint.sh adds the password, `dir` and `replicaof`."""
    text = (DOCKER / "redis.prod.conf").read_text()
    return apply(
        text,
        [
            Sub("\nbind 0.0.0.0\n", "\nbind 127.0.0.1\n"),
            Sub("\nport 6379\n", f"\nport {port}\n"),
            Sub("\nmaxmemory 2gb\n", "\nmaxmemory 64mb\n"),
        ],
        "docker/redis.prod.conf",
    )


def render_sentinel(port: int, master_port: int, directory: Path) -> str:
    """redis/sentinel.conf; redis-entrypoint.sh adds requirepass and auth-pass."""
    text = (DOCKER / "redis/sentinel.conf").read_text()
    return apply(
        text,
        [
            Sub("\nport 26379\n", f"\nport {port}\n"),
            Sub("\nbind 0.0.0.0\n", "\nbind 127.0.0.1\n"),
            Sub(
                "sentinel monitor mymaster redis-master 6379 2",
                f"sentinel monitor mymaster 127.0.0.1 {master_port} 2",
            ),
            Sub("\ndir /tmp\n", f"\ndir {directory}\n"),
        ],
        "docker/redis/sentinel.conf",
    )


# ----------------------------------------------------------------------------------------- secrets


def secret_substitutions(name: str, *, pgbouncer_port: int, sentinel_ports: list[int]) -> list[Sub]:
    """secrets/*.txt as scripts/generate-secrets.sh writes them, with this machine's hosts."""
    if name in ("database_url", "database_read_url"):
        return [Sub("@pgbouncer:6432/", f"@127.0.0.1:{pgbouncer_port}/")]
    if name == "redis_url":
        hosts = ",".join(f"127.0.0.1:{p}" for p in sentinel_ports)
        return [
            Sub(
                "@redis-sentinel-1:26379,redis-sentinel-2:26379,redis-sentinel-3:26379/",
                f"@{hosts}/",
            )
        ]
    return []
