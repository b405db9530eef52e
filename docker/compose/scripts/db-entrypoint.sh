#!/usr/bin/env bash
# Entry point of the database image: `primary` (default) or `replica`.
#
# primary  hands over to the official docker-entrypoint.sh (initdb on first start, which runs
#          /docker-entrypoint-initdb.d/010-llm-observatory.sh to create the roles), with
#          postgresql.conf from /etc/postgresql/postgresql.conf.
# replica  on first start clones the primary with pg_basebackup (slot replica_1) and then runs
#          as a hot standby; primary_conninfo in postgresql.replica.conf reads the replication
#          password from the passfile written here on every start.
#
# Paths can be moved for tests and VM installs: POSTGRES_CONFIG_FILE, PRODUCTION_ENV_FILE,
# SECRETS_DIR, REPLICATION_PASSFILE, BACKUP_SCRIPT; DB_PRELOAD_LIBRARIES replaces
# "timescaledb,pg_stat_statements" where TimescaleDB is not installed.
#
# Both re-read the DB_* tuning lines of /etc/llm-observatory/production.env (.env.production,
# mounted read-only) at every start, so `docker compose restart timescaledb-primary` applies an
# edited DB_SHARED_BUFFERS without recreating the container.
set -Eeuo pipefail

mode="${1:-primary}"
[[ $# -gt 0 ]] && shift
conf="${POSTGRES_CONFIG_FILE:-/etc/postgresql/postgresql.conf}"
env_file="${PRODUCTION_ENV_FILE:-/etc/llm-observatory/production.env}"
secrets="${SECRETS_DIR:-/run/secrets}"

# pgBackRest settings for archive-push (a child of the postmaster inherits the environment):
# scripts/backup.sh, sourced, exports the repository passphrase and S3 keys from the secrets
# and the BACKUP_* settings (pgbackrest.conf cannot read files) and points PGBACKREST_CONFIG at
# the rendered configuration - the same environment the backup service uses.
backup_script="${BACKUP_SCRIPT:-/usr/local/bin/backup.sh}"
if [[ -r "${backup_script}" ]]; then
    # shellcheck source=/dev/null
    if ! SECRETS_DIR="${secrets}" . "${backup_script}"; then
        echo "db-entrypoint: WARNING: pgBackRest environment incomplete (see above);" \
            "WAL archiving fails until it is fixed" >&2
    fi
fi

tuning=()
add_tuning() {  # add_tuning VAR guc
    local var="$1" guc="$2" value="${!1:-}"
    if [[ -r "${env_file}" ]]; then
        local line
        line="$(grep -E "^${var}=[A-Za-z0-9.]+$" "${env_file}" | tail -n1 || true)"
        [[ -n "${line}" ]] && value="${line#*=}"
    fi
    [[ -n "${value}" ]] && tuning+=(-c "${guc}=${value}")
    return 0
}
add_tuning DB_SHARED_BUFFERS shared_buffers
add_tuning DB_EFFECTIVE_CACHE_SIZE effective_cache_size
add_tuning DB_WORK_MEM work_mem
add_tuning DB_MAINTENANCE_WORK_MEM maintenance_work_mem
add_tuning DB_MAX_CONNECTIONS max_connections
add_tuning DB_MAX_WORKER_PROCESSES max_worker_processes
add_tuning DB_MAX_PARALLEL_WORKERS max_parallel_workers

# TimescaleDB is a property of this image, not of the portable postgresql.*.conf files.
preload=(-c "shared_preload_libraries=${DB_PRELOAD_LIBRARIES:-timescaledb,pg_stat_statements}")

case "${mode}" in
primary)
    exec docker-entrypoint.sh postgres -c "config_file=${conf}" "${preload[@]}" "${tuning[@]}" "$@"
    ;;
replica)
    : "${PGDATA:?PGDATA must be set}"
    primary_host="${PRIMARY_HOST:-timescaledb-primary}"
    primary_port="${PRIMARY_PORT:-5432}"
    passfile="${REPLICATION_PASSFILE:-/var/run/postgresql/replication.pgpass}"
    umask 077
    printf '*:*:*:replicator:%s\n' "$(<"${secrets}/replication_password")" >"${passfile}"
    if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
        echo "replica: cloning ${primary_host}:${primary_port} into ${PGDATA}"
        for _ in $(seq 1 60); do
            pg_isready -q -h "${primary_host}" -p "${primary_port}" && break
            sleep 2
        done
        mkdir -p "${PGDATA}"
        chmod 0700 "${PGDATA}"
        clone=(pg_basebackup -d "host=${primary_host} port=${primary_port} user=replicator
            sslmode=require passfile=${passfile}" -D "${PGDATA}" -X stream -S replica_1
            --checkpoint=fast --no-password)
        # The slot keeps the primary's WAL until the replica has it (bounded on the primary by
        # max_slot_wal_keep_size). Create it with the first clone; reuse it on a re-clone.
        "${clone[@]}" --create-slot || { rm -rf "${PGDATA:?}"/*; "${clone[@]}"; }
        touch "${PGDATA}/standby.signal"
    fi
    exec postgres -c "config_file=${conf}" "${preload[@]}" "${tuning[@]}" "$@"
    ;;
*)
    exec "${mode}" "$@"
    ;;
esac
