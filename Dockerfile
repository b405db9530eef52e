# syntax=docker/dockerfile:1
#
# LLM Observatory images. One file, four targets:
#
#   runtime     (default) the server: `observatory serve`; OBSERVATORY_ROLE=api serves everything,
#               OBSERVATORY_ROLE=collector serves only OTLP ingest, health and metrics.
#   timescaledb the database: TimescaleDB (PostgreSQL 16) plus pgBackRest, so the primary's
#               archive_command (`pgbackrest ... archive-push %p`) can run inside it.
#   backup      the backup runner: the database image (same PostgreSQL and the same pgBackRest
#               build as archive-push, as pgBackRest requires) with scripts/backup.sh as its
#               entry point.
#   pgbouncer   the connection pooler (Debian bookworm's PgBouncer, the version the tests run).
#
# Every image runs as an unprivileged user; the server needs nothing writable except its data
# directory (OBSERVATORY_DATA_DIR, a volume) and /tmp (a tmpfs), so it runs with a read-only root
# filesystem. No secret is baked in: secrets arrive at run time as files (Docker secrets, *_FILE).
#
#   docker build -t llm-observatory:local .
#   docker build --target backup -t llm-observatory-backup:local .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TIMESCALEDB_IMAGE=timescale/timescaledb:2.17.2-pg16
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# build: a virtualenv with the server and its dependencies, compiled to bytecode
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/observatory
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/observatory/bin/pip install --no-cache-dir . \
    && /opt/observatory/bin/python -m compileall -q /opt/observatory/lib

# ---------------------------------------------------------------------------------------------
# runtime: the server image (API server and collector)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="llm-observatory" \
      org.opencontainers.image.description="OpenTelemetry-native LLM observability server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/llm-observatory/llm-observatory"

# uid/gid 10001: the one service account of the production stack (see docs/PRODUCTION.md,
# "Users and file ownership"); secret files and data directories are owned by it.
ARG OBSERVATORY_UID=10001
ARG OBSERVATORY_GID=10001
RUN groupadd --system --gid "${OBSERVATORY_GID}" observatory \
    && useradd --system --uid "${OBSERVATORY_UID}" --gid "${OBSERVATORY_GID}" \
       --home-dir /var/lib/observatory --no-create-home --shell /usr/sbin/nologin observatory \
    && install -d -o observatory -g observatory -m 0750 /var/lib/observatory

COPY --from=build /opt/observatory /opt/observatory

ENV PATH=/opt/observatory/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OBSERVATORY_DATA_DIR=/var/lib/observatory \
    OBSERVATORY_HOST=0.0.0.0 \
    OBSERVATORY_PORT=8000 \
    OBSERVATORY_ROLE=api \
    OBSERVATORY_LOG_FORMAT=json

WORKDIR /var/lib/observatory
VOLUME ["/var/lib/observatory"]
EXPOSE 8000
USER ${OBSERVATORY_UID}:${OBSERVATORY_GID}

# /health/ready answers 200 only when the database and the writer are fine.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('OBSERVATORY_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["observatory"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# timescaledb: the database image (primary and replica)
# ---------------------------------------------------------------------------------------------
FROM ${TIMESCALEDB_IMAGE} AS timescaledb

# Alpine keeps only the current build of a package in its index, so a pinned version would
# stop building after the next security update; the base image tag pins the Alpine release.
# hadolint ignore=DL3018
RUN apk add --no-cache pgbackrest \
    && addgroup -S -g 10001 observatory \
    && adduser -S -D -H -u 10001 -G observatory -h /var/lib/postgresql -s /sbin/nologin observatory \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/pgbackrest /var/spool/pgbackrest \
    && install -d -m 0755 /etc/pgbackrest /etc/llm-observatory
COPY --chmod=0755 docker/compose/scripts/db-entrypoint.sh /usr/local/bin/llm-observatory-db
COPY --chmod=0755 docker/compose/scripts/db-init.sh /docker-entrypoint-initdb.d/010-llm-observatory.sh
COPY --chmod=0755 scripts/backup.sh /usr/local/bin/backup.sh

# Runs as the stack account (10001), which owns the data directory and the secret files;
# the official entrypoint supports a non-root user. The health check needs no password.
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["pg_isready", "-U", "postgres", "-h", "/var/run/postgresql"]
ENTRYPOINT ["/usr/local/bin/llm-observatory-db"]
CMD ["primary"]

# ---------------------------------------------------------------------------------------------
# backup: pgBackRest runner (scripts/backup.sh run|schedule|list|restore|verify|restore-test)
# ---------------------------------------------------------------------------------------------
FROM timescaledb AS backup

USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/backup.sh"]
CMD ["run", "full"]

# ---------------------------------------------------------------------------------------------
# pgbouncer: connection pooler in front of the primary (and the replica, alias *_ro)
# ---------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS pgbouncer

# Debian stable only takes security fixes, so "latest in bookworm" is a reviewed version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 observatory \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin observatory
COPY --chmod=0755 docker/pgbouncer/pgbouncer-entrypoint.sh /usr/local/bin/pgbouncer-entrypoint
USER 10001:10001
EXPOSE 6432
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pg_isready", "-h", "127.0.0.1", "-p", "6432"]
ENTRYPOINT ["/usr/local/bin/pgbouncer-entrypoint"]

# ---------------------------------------------------------------------------------------------
# The default target is the server.
# ---------------------------------------------------------------------------------------------
FROM runtime AS server
