#!/usr/bin/env bash
# Rotate secrets of a running stack without losing data.
#
# usage: scripts/rotate-secrets.sh [options] [all | NAME ...]
#        scripts/rotate-secrets.sh [options] --rollback NAME ...
#
# NAME (default: all = every one below except observatory_secret_key):
#   postgres_password       ALTER ROLE postgres
#   replication_password    ALTER ROLE replicator; restarts the replica
#   database_url            the application role `observatory` (database_url.txt and
#                           database_read_url.txt); restarts PgBouncer and the servers
#   grafana_db_password     ALTER ROLE grafana_reader; restarts PgBouncer, Grafana, postgres-exporter
#   redis_password          CONFIG SET requirepass/masterauth on Redis (no restart, data kept)
#                           and redis_url.txt; restarts Sentinels, redis-exporter and the servers
#   observatory_secret_key  new signing key; UI sessions end, and pseudonyms of redacted values
#                           (keyed hashes) differ from the ones written before; restarts the
#                           servers. Only when named explicitly.
#   grafana_admin_password  `grafana cli admin reset-admin-password` (docker mode only)
#
# Not rotatable here, by design: pgbackrest_cipher_pass (a repository's passphrase cannot change;
# start a new repository), initial_admin_key (used once; manage keys with `observatory keys`),
# and the third-party values s3_*, smtp_password, slack_webhook_url, pagerduty_routing_key
# (issue a new one at the provider, write the file, restart the service: docs/SECRETS_MANAGEMENT.md).
#
# For every secret: the new value is written to NAME.txt.new first, applied to the server while
# the old credentials still work, then NAME.txt becomes NAME.txt.previous and NAME.txt.new
# becomes NAME.txt (mode 0600, same owner). `--rollback NAME` puts the previous value back the
# same way.
#
# Options:
#   --secrets-dir DIR   default: secrets/ at the repository root
#   --mode docker       (default when `docker` is installed) reach PostgreSQL and Redis with
#                       `docker exec` into llm-observatory-db-primary / -redis-master and restart
#                       dependent services with docker compose
#   --mode direct       connect over the network (VM installs, tests); set PGHOST, PGPORT
#                       (127.0.0.1:5432), PGSSLMODE (require), REDIS_HOST, REDIS_PORT
#                       (127.0.0.1:6379); dependent services are listed, not restarted
#   --compose-file F    default: docker/compose/docker-compose.prod.yml
#   --no-restart        docker mode: apply and write files, but restart nothing
#   --dry-run           print what would happen, change nothing
set -Eeuo pipefail
umask 077

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secrets="${repo_root}/secrets"
compose_file="${repo_root}/docker/compose/docker-compose.prod.yml"
mode=""
dry_run=0
no_restart=0
rollback=0
names=()

ROTATABLE=(postgres_password replication_password database_url grafana_db_password
    redis_password observatory_secret_key grafana_admin_password)
# `all`: observatory_secret_key only when named, because it also keys the pseudonyms of
# redacted values: those written after a rotation no longer match earlier ones.
ALL=(postgres_password replication_password database_url grafana_db_password redis_password
    grafana_admin_password)

usage() { sed -n '2,41p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "rotate-secrets: $*" >&2; exit 1; }
log() { echo "rotate-secrets: $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --secrets-dir) secrets="${2:?}"; shift ;;
        --mode) mode="${2:?}"; shift ;;
        --compose-file) compose_file="${2:?}"; shift ;;
        --dry-run) dry_run=1 ;;
        --no-restart) no_restart=1 ;;
        --rollback) rollback=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) names+=("$1") ;;
    esac
    shift
done
if [[ -z "${mode}" ]]; then
    if command -v docker >/dev/null 2>&1; then mode=docker; else mode=direct; fi
fi
[[ "${mode}" == docker || "${mode}" == direct ]] || die "--mode must be docker or direct"
[[ -d "${secrets}" ]] || die "no secrets directory ${secrets} (run scripts/generate-secrets.sh)"
if [[ ${#names[@]} -eq 0 || " ${names[*]} " == *" all "* ]]; then
    [[ ${rollback} -eq 1 ]] && die "--rollback needs explicit names"
    expanded=("${ALL[@]}")
    for name in "${names[@]}"; do
        [[ "${name}" == all || " ${expanded[*]} " == *" ${name} "* ]] || expanded+=("${name}")
    done
    names=("${expanded[@]}")
fi
for name in "${names[@]}"; do
    case "${name}" in
        pgbackrest_cipher_pass)
            die "pgbackrest_cipher_pass cannot be rotated: a pgBackRest repository keeps the passphrase it was created with. Create a new repository (docs/SECRETS_MANAGEMENT.md)." ;;
        initial_admin_key)
            die "initial_admin_key is only read on the first start; rotate admin keys with 'observatory keys create/revoke'." ;;
        s3_access_key | s3_secret_key | smtp_password | slack_webhook_url | pagerduty_routing_key)
            die "${name} is issued by a third party: create a new one there, write secrets/${name}.txt and restart its service (docs/SECRETS_MANAGEMENT.md)." ;;
    esac
    [[ " ${ROTATABLE[*]} " == *" ${name} "* ]] || die "unknown secret ${name}"
done

random_token() {
    local length="$1" chars=""
    while [[ ${#chars} -lt ${length} ]]; do
        chars+="$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${chars:0:${length}}"
}

read_secret() { head -n1 "${secrets}/$1.txt"; }
url_password() { sed -E 's#^[a-z+]+://[^:/@]*:([^@]*)@.*$#\1#' <<<"$1"; }
url_with_password() {  # url_with_password URL NEWPASSWORD
    sed -E "s#^([a-z+]+://[^:/@]*:)[^@]*(@.*)\$#\\1$2\\2#" <<<"$1"
}

# ------------------------------------------------------------------ files: stage, commit, rollback
stage() {  # stage NAME VALUE: write NAME.txt.new
    local path="${secrets}/$1.txt"
    [[ ${dry_run} -eq 1 ]] && { log "would write $1.txt"; return 0; }
    printf '%s\n' "$2" >"${path}.new"
    chmod 0600 "${path}.new"
    chown --reference="${path}" "${path}.new" 2>/dev/null || true
}
commit() {  # commit NAME: NAME.txt -> NAME.txt.previous, NAME.txt.new -> NAME.txt
    local path="${secrets}/$1.txt"
    [[ ${dry_run} -eq 1 ]] && return 0
    cp -p "${path}" "${path}.previous"
    mv "${path}.new" "${path}"
    log "$1.txt replaced (previous value kept in $1.txt.previous)"
}
discard() { rm -f "${secrets}/$1.txt.new"; }
new_or_previous() {  # the value to switch to: a fresh one, or the previous one on --rollback
    local name="$1" length="$2" prefix="${3:-}"
    if [[ ${rollback} -eq 1 ]]; then
        [[ -f "${secrets}/${name}.txt.previous" ]] || die "no ${name}.txt.previous to roll back to"
        head -n1 "${secrets}/${name}.txt.previous"
    else
        printf '%s%s' "${prefix}" "$(random_token "${length}")"
    fi
}

# ------------------------------------------------------------------ PostgreSQL and Redis access
db_container="${DB_CONTAINER:-llm-observatory-db-primary}"

run_sql_checked() {
    if [[ ${mode} == direct ]]; then
        PGPASSWORD="$(read_secret postgres_password)" psql -v ON_ERROR_STOP=1 -X -q \
            "host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432} user=postgres dbname=${PGDATABASE:-llm_observatory} sslmode=${PGSSLMODE:-require}"
    else
        docker exec -i "${db_container}" psql -v ON_ERROR_STOP=1 -X -q -U postgres -d llm_observatory
    fi
}
alter_role_password() {  # alter_role_password ROLE NEWPASSWORD
    local role="$1" password="$2"
    [[ "${password}" =~ ^[A-Za-z0-9_-]+$ ]] || die "refusing a password with unexpected characters"
    if [[ ${dry_run} -eq 1 ]]; then log "would ALTER ROLE ${role} PASSWORD ..."; return 0; fi
    # The statement is DDL: keep it out of the server log and pg_stat_statements.
    run_sql_checked <<SQL
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET password_encryption = 'scram-sha-256';
ALTER ROLE "${role}" PASSWORD '${password}';
SQL
    log "role ${role}: new password set"
}

redis_exec() {  # redis_exec TARGET: commands on stdin (after an AUTH line) to one server
    local target="$1"
    if [[ ${mode} == docker ]]; then
        docker exec -i "${target}" redis-cli --no-auth-warning "${@:2}"
    else
        redis-cli --no-auth-warning -h "${target%:*}" -p "${target##*:}"
    fi
}
redis_targets() {  # the Redis servers (not Sentinels) to re-key
    if [[ ${mode} == docker ]]; then
        local c
        for c in "${REDIS_CONTAINER:-llm-observatory-redis-master}" llm-observatory-redis-replica; do
            docker inspect "${c}" >/dev/null 2>&1 && echo "${c}"
        done
        return 0
    fi
    local hosts="${REDIS_HOSTS:-${REDIS_HOST:-127.0.0.1}:${REDIS_PORT:-6379}}"
    tr ',' '\n' <<<"${hosts}"
}
sentinel_targets() {
    if [[ ${mode} == docker ]]; then
        local c
        for c in llm-observatory-redis-sentinel-1 llm-observatory-redis-sentinel-2 \
            llm-observatory-redis-sentinel-3; do
            docker inspect "${c}" >/dev/null 2>&1 && echo "${c}"
        done
        return 0
    fi
    [[ -n "${SENTINEL_HOSTS:-}" ]] && tr ',' '\n' <<<"${SENTINEL_HOSTS}"
    return 0
}
redis_set_password() {
    local password="$1" current out target
    current="$(read_secret redis_password)"
    [[ "${password}" =~ ^[A-Za-z0-9_-]+$ ]] || die "refusing a password with unexpected characters"
    if [[ ${dry_run} -eq 1 ]]; then log "would CONFIG SET requirepass on Redis"; return 0; fi
    # The current password goes first on stdin (AUTH), never on a command line. masterauth before
    # requirepass: a replica must keep reaching its master once the master has switched.
    while read -r target; do
        [[ -z "${target}" ]] && continue
        out="$(printf 'AUTH %s\nCONFIG SET masterauth %s\nCONFIG SET requirepass %s\n' \
            "${current}" "${password}" "${password}" | redis_exec "${target}")"
        if grep -qv '^OK$' <<<"${out}"; then
            die "Redis ${target} refused the new password: ${out}"
        fi
        log "redis ${target}: new password active (connections stay open, data kept)"
    done < <(redis_targets)
    # Sentinels keep monitoring with the new password; their own password changes on restart.
    while read -r target; do
        [[ -z "${target}" ]] && continue
        out="$(printf 'AUTH %s\nSENTINEL SET mymaster auth-pass %s\n' "${current}" "${password}" |
            redis_exec "${target}" -p 26379)"
        grep -qv '^OK$' <<<"${out}" && die "Sentinel ${target} refused the new auth-pass: ${out}"
        log "sentinel ${target}: monitors with the new password"
    done < <(sentinel_targets)
}

# ------------------------------------------------------------------ restarts (docker mode)
to_restart=()
need_restart() { to_restart+=("$@"); }
compose() { docker compose -f "${compose_file}" "$@"; }
do_restarts() {
    [[ ${#to_restart[@]} -eq 0 ]] && return 0
    local unique=() s
    for s in pgbouncer timescaledb-replica redis-sentinel-1 redis-sentinel-2 redis-sentinel-3 \
        redis-exporter postgres-exporter grafana api-server collector api; do
        [[ " ${to_restart[*]} " == *" ${s} "* ]] && unique+=("${s}")
    done
    if [[ ${mode} == direct || ${no_restart} -eq 1 || ${dry_run} -eq 1 ]]; then
        log "restart these services so they read the new files: ${unique[*]}"
        return 0
    fi
    # One at a time and in this order: PgBouncer before the servers that connect through it,
    # the scalable api-server replicas before API Server 1, so nginx always has a server.
    for s in "${unique[@]}"; do
        if compose ps --services --filter status=running 2>/dev/null | grep -qx "${s}"; then
            log "restarting ${s}"
            compose restart "${s}"
        fi
    done
}

# ------------------------------------------------------------------ the rotations
rotate_role() {  # rotate_role SECRETNAME ROLE
    local name="$1" role="$2" value
    value="$(new_or_previous "${name}" 40)"
    stage "${name}" "${value}"
    alter_role_password "${role}" "${value}" || { discard "${name}"; die "ALTER ROLE ${role} failed; nothing changed"; }
    commit "${name}"
}

for name in "${names[@]}"; do
    case "${name}" in
        postgres_password)
            rotate_role postgres_password postgres
            ;;
        replication_password)
            rotate_role replication_password replicator
            need_restart timescaledb-replica
            ;;
        grafana_db_password)
            rotate_role grafana_db_password grafana_reader
            need_restart pgbouncer grafana postgres-exporter
            ;;
        database_url)
            current_url="$(read_secret database_url)"
            current_read_url="$(read_secret database_read_url)"
            if [[ ${rollback} -eq 1 ]]; then
                [[ -f "${secrets}/database_url.txt.previous" ]] || die "no database_url.txt.previous"
                password="$(url_password "$(head -n1 "${secrets}/database_url.txt.previous")")"
            else
                password="$(random_token 40)"
            fi
            stage database_url "$(url_with_password "${current_url}" "${password}")"
            stage database_read_url "$(url_with_password "${current_read_url}" "${password}")"
            role="$(sed -E 's#^[a-z+]+://([^:/@]+):.*$#\1#' <<<"${current_url}")"
            if ! alter_role_password "${role}" "${password}"; then
                discard database_url; discard database_read_url
                die "ALTER ROLE ${role} failed; nothing changed"
            fi
            commit database_url
            commit database_read_url
            need_restart pgbouncer api-server collector api
            ;;
        redis_password)
            value="$(new_or_previous redis_password 40)"
            current_url="$(read_secret redis_url)"
            stage redis_password "${value}"
            stage redis_url "$(url_with_password "${current_url}" "${value}")"
            redis_set_password "${value}" || { discard redis_password; discard redis_url; exit 1; }
            commit redis_password
            commit redis_url
            need_restart redis-sentinel-1 redis-sentinel-2 redis-sentinel-3 redis-exporter \
                api-server collector api
            ;;
        observatory_secret_key)
            stage observatory_secret_key "$(new_or_previous observatory_secret_key 64)"
            commit observatory_secret_key
            need_restart api-server collector api
            ;;
        grafana_admin_password)
            if [[ ${mode} != docker ]]; then
                log "grafana_admin_password: skipped in direct mode (needs the grafana container)"
                continue
            fi
            value="$(new_or_previous grafana_admin_password 32)"
            stage grafana_admin_password "${value}"
            if [[ ${dry_run} -eq 0 ]]; then
                printf '%s\n' "${value}" | docker exec -i llm-observatory-grafana \
                    grafana cli admin reset-admin-password --password-from-stdin >/dev/null ||
                    { discard grafana_admin_password; die "grafana refused the new admin password"; }
            fi
            commit grafana_admin_password
            ;;
    esac
done

do_restarts
log "done"
