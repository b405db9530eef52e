#!/usr/bin/env bash
# Database failover: promote the streaming replica and point PgBouncer at it. The procedure is
# docs/PRODUCTION_DEPLOYMENT.md, "High availability: failover and recovery"; tests/deploy/
# test_ha.py runs this script against the loopback stack (deploy/local).
#
#   failover-db.sh promote [options]       the primary is lost: promote the replica
#   failover-db.sh repoint --database NAME --to HOST:PORT [PgBouncer options]
#                                          point one PgBouncer database at another server
#
# promote, step by step:
#   1. refuses while the old primary still answers as a primary (two primaries would both
#      take writes, and the servers would follow whichever PgBouncer names): stop it first,
#      `docker compose -f docker/compose/docker-compose.prod.yml stop timescaledb-primary`,
#      or pass --force if you have fenced it some other way;
#   2. waits until the replica has replayed all the WAL it received from the old primary;
#   3. promotes it (SELECT pg_promote()) and checks that it has left recovery;
#   4. points PgBouncer's `llm_observatory` entry at it and reloads PgBouncer (SIGHUP). The
#      servers' broken connections fail, their next ones go to the new primary: no server
#      restart. The read alias `llm_observatory_ro` already names the replica.
# Running it again after a success changes nothing (an already promoted replica is accepted).
#
# Options (defaults: the compose stack, run from the repository root on the Docker host):
#   --replica-container NAME      psql on the replica via docker exec (llm-observatory-db-replica)
#   --replica-host H --replica-port P
#                                 ... or psql -h H -p P as user postgres (socket directory or
#                                 address; the superuser logs in over the local socket)
#   --old-primary-container NAME  (llm-observatory-db-primary)
#   --old-primary-host H --old-primary-port P
#   --new-primary HOST:PORT       the promoted server as PgBouncer reaches it
#                                 (timescaledb-replica:5432)
#   --database NAME               PgBouncer database entry to repoint (llm_observatory)
#   --to HOST:PORT                (repoint) where the entry should point
#   --pgbouncer-ini FILE          (docker/pgbouncer/pgbouncer.ini; edited in place, so a
#                                 bind-mounted file keeps its inode)
#   --pgbouncer-container NAME    reload with `docker kill -s HUP NAME` (llm-observatory-pgbouncer)
#   --pgbouncer-pid PID           ... or with `kill -HUP PID`
#   --timeout SECONDS             for catching up and for the promotion (60)
#   --force                       promote although the old primary answers as a primary
#   --dry-run                     say what would be done, change nothing
set -Eeuo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
say() { echo "failover-db: $*"; }
die() { echo "failover-db: $*" >&2; exit 1; }

action="${1:-}"
case "${action}" in
    promote | repoint) shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

replica_container="llm-observatory-db-replica"
replica_host=""
replica_port="5432"
old_container="llm-observatory-db-primary"
old_host=""
old_port="5432"
new_primary="timescaledb-replica:5432"
database="llm_observatory"
to=""
ini="docker/pgbouncer/pgbouncer.ini"
pgb_container="llm-observatory-pgbouncer"
pgb_pid=""
timeout=60
force=0
dry_run=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --replica-container) replica_container="${2:?}"; replica_host=""; shift ;;
        --replica-host) replica_host="${2:?}"; shift ;;
        --replica-port) replica_port="${2:?}"; shift ;;
        --old-primary-container) old_container="${2:?}"; old_host=""; shift ;;
        --old-primary-host) old_host="${2:?}"; shift ;;
        --old-primary-port) old_port="${2:?}"; shift ;;
        --new-primary) new_primary="${2:?}"; shift ;;
        --database) database="${2:?}"; shift ;;
        --to) to="${2:?}"; shift ;;
        --pgbouncer-ini) ini="${2:?}"; shift ;;
        --pgbouncer-container) pgb_container="${2:?}"; pgb_pid=""; shift ;;
        --pgbouncer-pid) pgb_pid="${2:?}"; shift ;;
        --timeout) timeout="${2:?}"; shift ;;
        --force) force=1 ;;
        --dry-run) dry_run=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "failover-db: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ "${timeout}" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

# sql_on replica|old SQL: one value, or a non-zero status when the server does not answer.
sql_on() {
    local which="$1" sql="$2" host port container
    if [[ "${which}" == replica ]]; then
        host="${replica_host}" port="${replica_port}" container="${replica_container}"
    else
        host="${old_host}" port="${old_port}" container="${old_container}"
    fi
    local psql=(psql -X -q -At -v ON_ERROR_STOP=1 -U postgres -d postgres -c "${sql}")
    if [[ -n "${host}" ]]; then
        PGCONNECT_TIMEOUT=5 "${psql[@]}" -h "${host}" -p "${port}"
    else
        docker exec -e PGCONNECT_TIMEOUT=5 "${container}" "${psql[@]}"
    fi
}


reload_pgbouncer() {
    if [[ -n "${pgb_pid}" ]]; then
        kill -HUP "${pgb_pid}"
    else
        docker kill -s HUP "${pgb_container}" >/dev/null
    fi
}

# repoint_entry NAME HOST:PORT: rewrite host= and port= of one [databases] line, then reload.
repoint_entry() {
    local name="$1" host port line new_line tmp
    [[ "$2" =~ ^([A-Za-z0-9._-]+):([0-9]+)$ ]] || die "expected HOST:PORT, got '$2'"
    host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}"
    [[ -f "${ini}" ]] || die "${ini} does not exist (--pgbouncer-ini)"
    line="$(grep -E "^${name}[[:space:]]*=" "${ini}" || true)"
    [[ -n "${line}" ]] || die "${ini} has no '${name} = ...' line in [databases]"
    new_line="$(sed -E "s/host=[^[:space:]]+/host=${host}/; s/port=[0-9]+/port=${port}/" <<<"${line}")"
    if [[ "${line}" == "${new_line}" ]]; then
        say "PgBouncer ${name} already points at ${host}:${port}"
    elif [[ ${dry_run} -eq 1 ]]; then
        say "would change in ${ini}: '${line}' -> '${new_line}'"
    else
        tmp="$(mktemp)"
        awk -v name="${name}" -v repl="${new_line}" \
            '$0 ~ "^" name "[[:space:]]*=" { print repl; next } { print }' "${ini}" >"${tmp}"
        cat "${tmp}" >"${ini}"
        rm -f "${tmp}"
        say "PgBouncer ${name}: '${line}' -> '${new_line}'"
    fi
    if [[ ${dry_run} -eq 1 ]]; then
        say "would reload PgBouncer (SIGHUP)"
    else
        reload_pgbouncer
        say "PgBouncer reloaded (SIGHUP)"
    fi
}

if [[ "${action}" == repoint ]]; then
    [[ -n "${to}" ]] || die "repoint needs --to HOST:PORT"
    repoint_entry "${database}" "${to}"
    exit 0
fi

# 1. The old primary must not be a writable primary any more.
if old_state="$(sql_on old "SELECT pg_is_in_recovery()" 2>/dev/null)"; then
    if [[ "${old_state}" == f && ${force} -eq 0 ]]; then
        die "the old primary still answers as a primary; stop it first (or --force if it is fenced)"
    fi
    say "old primary answers (in recovery: ${old_state})"
else
    say "old primary does not answer: it is down"
fi

# 2. Everything the replica received is replayed before it becomes the primary.
state="$(sql_on replica "SELECT pg_is_in_recovery()")" || die "the replica does not answer"
if [[ "${state}" == t ]]; then
    deadline=$((SECONDS + timeout))
    while :; do
        lag="$(sql_on replica "SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)")"
        [[ "${lag%.*}" -le 0 ]] && break
        ((SECONDS < deadline)) || die "the replica has not replayed ${lag} bytes after ${timeout}s"
        sleep 0.2
    done
    received="$(sql_on replica "SELECT coalesce(pg_last_wal_receive_lsn()::text, 'none')")"
    say "replica has replayed everything it received (up to ${received})"
    # 3. Promote.
    if [[ ${dry_run} -eq 1 ]]; then
        say "would promote the replica: SELECT pg_promote(true, ${timeout})"
    else
        promoted="$(sql_on replica "SELECT pg_promote(true, ${timeout})")"
        [[ "${promoted}" == t ]] || die "pg_promote did not finish within ${timeout}s"
        [[ "$(sql_on replica "SELECT pg_is_in_recovery()")" == f ]] || die "still in recovery"
        timeline="$(sql_on replica "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")"
        say "replica promoted: it is the primary now, on timeline $((16#${timeline}))"
    fi
else
    say "the replica is already a primary (promoted earlier)"
fi

# The new primary has no replica yet: if it inherited synchronous replication (an ALTER SYSTEM
# copied by pg_basebackup), every commit would wait for a standby that does not exist.
if [[ ${dry_run} -eq 0 ]]; then
    sync_names="$(sql_on replica "SHOW synchronous_standby_names")"
    if [[ -n "${sync_names}" ]]; then
        sql_on replica "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null
        sql_on replica "SELECT pg_reload_conf()" >/dev/null
        say "synchronous_standby_names was '${sync_names}': off until a new replica streams"
    fi
fi

# 4. PgBouncer: the application's database entry names the new primary.
repoint_entry "${database}" "${new_primary}"
say "done: rebuild a replica from the new primary next (docs/PRODUCTION_DEPLOYMENT.md)"
