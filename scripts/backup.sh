#!/usr/bin/env bash
# LLM Observatory backups with pgBackRest: encrypted, point-in-time, verified by restoring.
# The manual is docs/BACKUP_AND_RECOVERY.md.
#
#   backup.sh run [auto|full|incr|diff]   take a backup now, into every repository
#                                         (auto, the default: full if none today (UTC), else incr)
#   backup.sh schedule                    run forever: full daily at BACKUP_FULL_AT (02:00 UTC),
#                                         incremental hourly, restore test weekly after the full
#   backup.sh list [--json]               the backups in every repository
#   backup.sh restore --target-dir DIR [--time 'YYYY-MM-DD HH:MM:SS+00'] [--repo N] [--set LABEL]
#                     [--archive]         restore the latest backup (or the state at --time) into
#                                         a NEW data directory; the primary is never touched
#   backup.sh verify                      check every file of every repository (pgbackrest verify)
#   backup.sh check                       check that the primary's WAL archiving works
#   backup.sh restore-test [--repo N]     restore the latest backup into a scratch instance,
#                                         start it, check it, record the result for Prometheus
#
# Sourced (`. backup.sh`) it only exports the pgBackRest environment below and returns: the
# database entry point does that so the primary's archive_command sees the same settings.
#
# Settings (environment; defaults in parentheses):
#   SECRETS_DIR (/run/secrets): pgbackrest_cipher_pass (required), s3_access_key, s3_secret_key
#   BACKUP_PGBACKREST_CONF (/etc/pgbackrest/pgbackrest.conf) the configuration template
#   PGBACKREST_STANZA (llm-observatory)
#   BACKUP_RETENTION_FULL_TYPE (time) time = keep full backups BACKUP_RETENTION_FULL_DAYS days
#     (BACKUP_RETENTION_DAYS, 30); count = keep the newest BACKUP_RETENTION_FULL_COUNT (7)
#   BACKUP_S3_BUCKET (empty = local repository only), BACKUP_S3_ENDPOINT (s3.amazonaws.com,
#     host or host:port), BACKUP_S3_REGION (us-east-1), BACKUP_S3_URI_STYLE (host|path),
#     BACKUP_S3_PATH (/llm-observatory), BACKUP_S3_VERIFY_TLS (y), BACKUP_S3_CA_FILE
#   BACKUP_METRICS_DIR (unset = no metrics): Prometheus textfile collector directory
#   BACKUP_FULL_AT (02:00, UTC), BACKUP_RESTORE_TEST_DAYS (7 = Sundays; 1-7 list, daily, never)
#   BACKUP_RESTORE_TEST_DIR (/var/lib/pgbackrest/restore-test) scratch space for restore-test
#   BACKUP_RESTORE_TEST_TIMEOUT (3600) seconds the scratch instance may take to recover
#   BACKUP_RESTORE_TEST_SAMPLE_SPANS (1000) newest spans compared with the primary
#   PGHOST, PGPORT, PGUSER, PGDATABASE (llm_observatory): the primary, for checks;
#   BACKUP_DATABASE (PGDATABASE) the Observatory database the restore test checks
#   BACKUP_RUNTIME_DIR (${TMPDIR:-/tmp}/llm-observatory-backup), PG_BINDIR (auto)
# Any pgBackRest option can also be set as PGBACKREST_<OPTION> (it wins over the file).

# ---------------------------------------------------------------------------------------------
# Environment (also what sourcing this file does)
# ---------------------------------------------------------------------------------------------

_bk_err() { printf 'backup: error: %s\n' "$*" >&2; }

_bk_secret() {  # _bk_secret FILE -> the file's content without trailing newlines
    local file="$1" value
    [[ -r "${file}" ]] || { _bk_err "secret file ${file} is missing or unreadable"; return 1; }
    value="$(<"${file}")"
    if [[ -z "${value}" || "${value}" == CHANGE-ME* ]]; then
        _bk_err "secret file ${file} is empty or still a CHANGE-ME placeholder"
        return 1
    fi
    printf '%s' "${value}"
}

_bk_positive_int() {  # _bk_positive_int NAME VALUE
    if ! [[ "$2" =~ ^[1-9][0-9]{0,6}$ ]]; then
        _bk_err "$1 must be a whole number between 1 and 9999999, not '$2'"
        return 1
    fi
}

# Export PGBACKREST_* from the secrets and BACKUP_* settings; render the configuration.
backup_env() {
    local template="${BACKUP_PGBACKREST_CONF:-${PGBACKREST_CONFIG:-/etc/pgbackrest/pgbackrest.conf}}"
    local secrets="${SECRETS_DIR:-/run/secrets}"
    local runtime="${BACKUP_RUNTIME_DIR:-${TMPDIR:-/tmp}/llm-observatory-backup}"
    local pass retention_type retention var
    [[ -r "${template}" ]] || { _bk_err "pgBackRest configuration ${template} is not readable"; return 1; }
    export BACKUP_PGBACKREST_CONF="${template}"
    export PGBACKREST_STANZA="${PGBACKREST_STANZA:-llm-observatory}"

    pass="$(_bk_secret "${BACKUP_CIPHER_PASS_FILE:-${secrets}/pgbackrest_cipher_pass}")" || return 1
    export PGBACKREST_REPO1_CIPHER_PASS="${pass}"

    retention_type="${BACKUP_RETENTION_FULL_TYPE:-time}"
    case "${retention_type}" in
    time) retention="${BACKUP_RETENTION_FULL_DAYS:-${BACKUP_RETENTION_DAYS:-30}}" ;;
    count) retention="${BACKUP_RETENTION_FULL_COUNT:-7}" ;;
    *) _bk_err "BACKUP_RETENTION_FULL_TYPE must be time or count, not '${retention_type}'"; return 1 ;;
    esac
    _bk_positive_int "retention (BACKUP_RETENTION_FULL_${retention_type^^})" "${retention}" || return 1
    export PGBACKREST_REPO1_RETENTION_FULL_TYPE="${retention_type}"
    export PGBACKREST_REPO1_RETENTION_FULL="${retention}"

    # Never let a stray PGBACKREST_REPO2_* define a repository: a repo2 without repo2-type=s3
    # would be a second posix repository on repo1's default path.
    for var in $(compgen -e); do
        [[ "${var}" == PGBACKREST_REPO2_* ]] && unset "${var}"
    done
    if ! { mkdir -p "${runtime}" && chmod 0700 "${runtime}"; }; then
        _bk_err "cannot create ${runtime}"
        return 1
    fi
    export BACKUP_RUNTIME_DIR="${runtime}"

    if [[ -n "${BACKUP_S3_BUCKET:-}" ]]; then
        if ! grep -qE '^[[:space:]]*repo2-type[[:space:]]*=[[:space:]]*s3[[:space:]]*$' "${template}"; then
            _bk_err "BACKUP_S3_BUCKET is set but ${template} declares no repo2-type=s3"
            return 1
        fi
        local endpoint="${BACKUP_S3_ENDPOINT:-s3.amazonaws.com}" key secret
        key="$(_bk_secret "${BACKUP_S3_ACCESS_KEY_FILE:-${secrets}/s3_access_key}")" || return 1
        secret="$(_bk_secret "${BACKUP_S3_SECRET_KEY_FILE:-${secrets}/s3_secret_key}")" || return 1
        export PGBACKREST_REPO2_S3_KEY="${key}" PGBACKREST_REPO2_S3_KEY_SECRET="${secret}"
        export PGBACKREST_REPO2_S3_BUCKET="${BACKUP_S3_BUCKET}"
        if [[ "${endpoint}" =~ ^(.+):([0-9]+)$ ]]; then
            export PGBACKREST_REPO2_S3_ENDPOINT="${BASH_REMATCH[1]}"
            export PGBACKREST_REPO2_STORAGE_PORT="${BASH_REMATCH[2]}"
        else
            export PGBACKREST_REPO2_S3_ENDPOINT="${endpoint}"
        fi
        export PGBACKREST_REPO2_S3_REGION="${BACKUP_S3_REGION:-us-east-1}"
        [[ -n "${BACKUP_S3_URI_STYLE:-}" ]] && export PGBACKREST_REPO2_S3_URI_STYLE="${BACKUP_S3_URI_STYLE}"
        [[ -n "${BACKUP_S3_PATH:-}" ]] && export PGBACKREST_REPO2_PATH="${BACKUP_S3_PATH}"
        [[ -n "${BACKUP_S3_VERIFY_TLS:-}" ]] && export PGBACKREST_REPO2_STORAGE_VERIFY_TLS="${BACKUP_S3_VERIFY_TLS}"
        [[ -n "${BACKUP_S3_CA_FILE:-}" ]] && export PGBACKREST_REPO2_STORAGE_CA_FILE="${BACKUP_S3_CA_FILE}"
        export PGBACKREST_REPO2_CIPHER_PASS="${pass}"
        export PGBACKREST_REPO2_RETENTION_FULL_TYPE="${retention_type}"
        export PGBACKREST_REPO2_RETENTION_FULL="${retention}"
        export PGBACKREST_CONFIG="${template}"
        export BACKUP_REPOS="1 2"
    else
        # Local only: the same file without the repo2 lines.
        if ! { grep -vE '^[[:space:]]*repo2-' "${template}" >"${runtime}/pgbackrest.conf.tmp" &&
            mv -f "${runtime}/pgbackrest.conf.tmp" "${runtime}/pgbackrest.conf"; }; then
            _bk_err "cannot write ${runtime}/pgbackrest.conf"
            return 1
        fi
        export PGBACKREST_CONFIG="${runtime}/pgbackrest.conf"
        export BACKUP_REPOS="1"
    fi
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    backup_env
    return $?
fi

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
set -Eeuo pipefail
umask 077
export TZ=UTC  # backup labels, "today" and the schedule are all in UTC
PROGRAM="$(basename "$0")"

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${PROGRAM}" "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {  # usage [EXIT_CODE]
    sed -n '2,/^# Sourced/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# pgBackRest with progress on stdout; the output is kept in $PGBR_LAST for the checks after it.
PGBR_OUT="" PGBR_LAST=""
pgbr() {
    PGBR_OUT="${BACKUP_RUNTIME_DIR}/pgbackrest-$$.tmp" PGBR_LAST="${BACKUP_RUNTIME_DIR}/pgbackrest-$$.out"
    local status=0
    # (A wrong passphrase makes pgBackRest print decrypted garbage: keep the terminal sane.)
    pgbackrest --log-level-console=info --log-level-stderr=off "$@" 2>&1 |
        LC_ALL=C tr -c '\11\12\40-\176' '?' | tee "${PGBR_OUT}" || status=$?
    # A wrong passphrase decrypts the info files into garbage, which pgBackRest reports as a
    # format error of both copies; say what it almost always means.
    if ((status != 0)) && grep -qE 'CryptoError|key/value found outside of section|bad decrypt' "${PGBR_OUT}"; then
        log "error: the repository cannot be decrypted with this passphrase: it is not the one the" \
            "repository was created with (or the repository's info files are damaged);" \
            "check ${BACKUP_CIPHER_PASS_FILE:-${SECRETS_DIR:-/run/secrets}/pgbackrest_cipher_pass}"
    fi
    mv -f "${PGBR_OUT}" "${PGBR_LAST}"
    return "${status}"
}

# The newest full backup label of a repository ("" when none), e.g. 20250105-020001F.
newest_full() {
    pgbackrest --log-level-console=warn --repo="$1" --output=json info 2>/dev/null |
        grep -oE '"label"[[:space:]]*:[[:space:]]*"[0-9]{8}-[0-9]{6}F"' |
        grep -oE '[0-9]{8}-[0-9]{6}F' | sort | tail -n1 || true
}

label_epoch() {  # 20250105-020001F -> unix seconds
    local l="$1"
    date -u -d "${l:0:4}-${l:4:2}-${l:6:2} ${l:9:2}:${l:11:2}:${l:13:2}" +%s
}

# ---------------------------------------------------------------------------------------------
# Metrics: Prometheus textfile collector, one file, replaced atomically
# ---------------------------------------------------------------------------------------------
METRICS=(
    "observatory_backup_last_success_timestamp_seconds|Unix time of the last backup that succeeded in every repository."
    "observatory_backup_last_status|1 when the last backup succeeded in every repository, 0 when it failed."
    "observatory_backup_last_duration_seconds|Duration of the last backup run."
    "observatory_restore_test_last_success_timestamp_seconds|Unix time of the last successful restore test."
    "observatory_restore_test_last_status|1 when the last restore test passed, 0 when it failed."
    "observatory_restore_test_last_duration_seconds|Duration of the last restore test."
    "observatory_restore_test_restored_spans|Spans in the database restored by the last successful restore test."
)

_metrics_update() {  # name=value ... -> merged into the file
    local dir="$1" file="$1/pgbackrest.prom" tmp entry name help value
    shift
    declare -A values=()
    if [[ -r "${file}" ]]; then
        while read -r name value; do
            [[ -n "${name}" && "${name}" != \#* ]] && values["${name}"]="${value}"
        done <"${file}"
    fi
    for entry in "$@"; do values["${entry%%=*}"]="${entry#*=}"; done
    tmp="$(mktemp "${dir}/.pgbackrest.prom.XXXXXX")"
    for entry in "${METRICS[@]}"; do
        name="${entry%%|*}" help="${entry#*|}"
        [[ -n "${values[${name}]:-}" ]] || continue  # a job that never ran has no series
        printf '# HELP %s %s\n# TYPE %s gauge\n%s %s\n' \
            "${name}" "${help}" "${name}" "${name}" "${values[${name}]}" >>"${tmp}"
    done
    chmod 0644 "${tmp}"
    mv -f "${tmp}" "${file}"
}

metrics_update() {
    local dir="${BACKUP_METRICS_DIR:-}"
    [[ -n "${dir}" ]] || return 0
    mkdir -p "${dir}" || { log "warning: cannot create BACKUP_METRICS_DIR ${dir}"; return 0; }
    if command -v flock >/dev/null 2>&1; then
        (flock -w 60 9 || true; _metrics_update "${dir}" "$@") 9>"${dir}/.pgbackrest.prom.lock"
    else
        _metrics_update "${dir}" "$@"
    fi || log "warning: could not write ${dir}/pgbackrest.prom"
}

# A gauge's value in the current file (empty when none): a failed job keeps the last success.
previous_metric() {
    local file="${BACKUP_METRICS_DIR:-/nonexistent}/pgbackrest.prom"
    [[ -r "${file}" ]] && awk -v n="$1" '$1 == n { print $2 }' "${file}" | tail -n1
    return 0
}

record() {  # record backup|restore_test STATUS START [extra name=value ...]
    local kind="$1" status="$2" start="$3" now ok
    shift 3
    now="$(date +%s)"
    ok="$(previous_metric "observatory_${kind}_last_success_timestamp_seconds")"
    ((status == 0)) && ok="${now}"
    metrics_update "observatory_${kind}_last_status=$((status == 0 ? 1 : 0))" \
        "observatory_${kind}_last_success_timestamp_seconds=${ok:-0}" \
        "observatory_${kind}_last_duration_seconds=$((now - start))" "$@"
}

# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
auto_type() {  # full if the repository has no full backup from today (UTC), else incr
    local newest
    newest="$(newest_full "$1")"
    if [[ -n "${newest}" && "${newest:0:8}" == "$(date -u +%Y%m%d)" ]]; then
        echo incr
    else
        echo full
    fi
}

# Create the stanza in every repository that has none yet (first backup, new S3 bucket).
ensure_stanza() {
    local repo missing=0 attempt
    for repo in ${BACKUP_REPOS}; do
        # info status 1 = missing stanza path, 3 = missing stanza data
        if pgbackrest --log-level-console=warn --repo="${repo}" --output=json info 2>/dev/null |
            grep -qE '"code"[[:space:]]*:[[:space:]]*[13][,}]'; then
            missing=1
        fi
    done
    ((missing)) || return 0
    for attempt in 1 2 3 4 5; do
        pgbr stanza-create && return 0
        # The primary's asynchronous archive-push holds the archive lock for a moment.
        grep -q 'unable to acquire lock' "${PGBR_LAST}" || return 1
        log "stanza-create: lock busy, retrying (${attempt}/5)"
        sleep 3
    done
    return 1
}

cmd_run() {
    local type="${1:-auto}" start status=0 repo repo_type
    case "${type}" in
    auto | full | incr | diff) ;;
    *) die "run: backup type must be auto, full, incr or diff, not '${type}'" ;;
    esac
    start="$(date +%s)"
    ensure_stanza || log "warning: stanza-create failed; the backups below will tell why"
    for repo in ${BACKUP_REPOS}; do
        if ((${STOPPING:-0})); then  # the schedule was asked to stop: no new backup
            status=1
            log "error: repo${repo}: backup skipped, stopping"
            continue
        fi
        repo_type="${type}"
        [[ "${type}" == auto ]] && repo_type="$(auto_type "${repo}")"
        log "starting ${repo_type} backup into repo${repo}"
        if pgbr --repo="${repo}" backup --type="${repo_type}"; then
            log "repo${repo}: ${repo_type} backup done"
        else
            status=1
            log "error: repo${repo}: ${repo_type} backup FAILED"
        fi
    done
    record backup "${status}" "${start}"
    return "${status}"
}

# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------
restore_test_due() {  # on a day listed in BACKUP_RESTORE_TEST_DAYS (date +%u: 1 = Monday)
    local days="${BACKUP_RESTORE_TEST_DAYS:-7}" today
    today="$(date -u +%u)"
    case "${days}" in
    daily) return 0 ;;
    never | "") return 1 ;;
    esac
    [[ ",${days// /,}," == *",${today},"* ]]
}

cmd_schedule() {
    local full_at="${BACKUP_FULL_AT:-02:00}" hour minute now delta newest
    [[ "${full_at}" =~ ^([01][0-9]|2[0-3]):([0-5][0-9])$ ]] ||
        die "BACKUP_FULL_AT must be HH:MM (UTC), not '${full_at}'"
    hour="${BASH_REMATCH[1]}" minute="${BASH_REMATCH[2]}"
    log "schedule: full backup daily at ${full_at} UTC, incremental hourly at :${minute}," \
        "restore test after the full backup on days '${BACKUP_RESTORE_TEST_DAYS:-7}'" \
        "(repositories: ${BACKUP_REPOS})"
    SLEEP_PID=""
    STOPPING=0
    IN_RESTORE_TEST=0
    # SIGTERM (docker stop) ends a sleep at once; a backup that is running finishes and records
    # its outcome in the metrics first, then the schedule stops. A restore test stops at once
    # (its EXIT trap removes the scratch instance).
    trap 'STOPPING=1
        if ((IN_RESTORE_TEST)); then log "schedule: stopping"; exit 0; fi
        [[ -n "${SLEEP_PID}" ]] && kill "${SLEEP_PID}" 2>/dev/null' TERM INT
    # A new deployment is protected at once, not from the next 02:00.
    if [[ -z "$(newest_full 1)" ]]; then
        log "schedule: no full backup yet, taking one now"
        cmd_run full || true
    fi
    stop_if_asked
    while true; do
        now="$(date -u +%s)"
        delta=$((10#${minute} * 60 - now % 3600))
        ((delta <= 0)) && delta=$((delta + 3600))
        while ((delta > 0)); do  # short sleeps, so `docker stop` is answered promptly
            sleep "$((delta > 30 ? 30 : delta))" &
            SLEEP_PID=$!
            wait "${SLEEP_PID}" || true
            SLEEP_PID=""
            stop_if_asked
            delta=$((delta - 30))
        done
        sleep 1
        stop_if_asked
        if [[ "$(date -u +%H)" == "${hour}" ]]; then
            cmd_run full || true
            stop_if_asked
            if restore_test_due; then
                IN_RESTORE_TEST=1
                cmd_restore_test || true
                IN_RESTORE_TEST=0
            fi
        else
            newest="$(newest_full 1)"
            # Heal a missed daily full (container down at 02:00, failed run) within the hour.
            if [[ -z "${newest}" ]] || (($(date -u +%s) - $(label_epoch "${newest}") > 26 * 3600)); then
                log "schedule: no full backup in the last 26 hours, taking one now"
                cmd_run full || true
            else
                cmd_run incr || true
            fi
        fi
        stop_if_asked
    done
}

stop_if_asked() {
    if ((STOPPING)); then
        log "schedule: stopping"
        exit 0
    fi
}

# ---------------------------------------------------------------------------------------------
# list, verify, check
# ---------------------------------------------------------------------------------------------
cmd_list() {
    if [[ "${1:-}" == "--json" ]]; then
        pgbackrest --output=json info
    else
        pgbackrest info
    fi
}

# pgbackrest verify exits 0 even when it found damaged files; its summary says "status: error".
verify_repo() {
    pgbr --repo="$1" verify || return 1
    if grep -qE 'status: error|invalid result' "${PGBR_LAST}"; then
        log "error: repo$1: pgbackrest verify found damaged or missing files (see above)"
        return 1
    fi
}

cmd_verify() {
    local repo status=0
    for repo in ${BACKUP_REPOS}; do
        log "verifying repo${repo} (every backup file and WAL segment)"
        if verify_repo "${repo}"; then
            log "repo${repo}: verify passed"
        else
            status=1
            log "error: repo${repo}: verify FAILED"
        fi
    done
    return "${status}"
}

cmd_check() {
    pgbr check
}

# ---------------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------------
primary_pgdata() {
    if [[ -n "${PGBACKREST_PG1_PATH:-}" ]]; then
        echo "${PGBACKREST_PG1_PATH}"
    else
        sed -nE 's/^[[:space:]]*pg1-path[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1/p' \
            "${PGBACKREST_CONFIG}" | tail -n1
    fi
}

check_new_target() {  # a new or empty directory: a restore never overwrites anything
    local target="$1" primary
    [[ "${target}" == /* ]] || die "restore: --target-dir must be an absolute path"
    [[ -e "${target}" ]] || return 0
    [[ -d "${target}" ]] || die "restore: ${target} exists and is not a directory"
    [[ -z "$(ls -A "${target}")" ]] && return 0
    primary="$(primary_pgdata)"
    if [[ -n "${primary}" && -e "${primary}" && "${target}" -ef "${primary}" ]]; then
        die "restore: ${target} is the primary's live data directory; restore into a NEW directory"
    fi
    die "restore: ${target} is not empty; give a new (or empty) directory"
}

valid_time() {
    [[ "$1" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}\ [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?[+-][0-9]{2}(:?[0-9]{2})?$ ]]
}

cmd_restore() {
    local target="" time="" repo="" set="" archive=off
    while (($#)); do
        case "$1" in
        --target-dir) target="${2:-}"; shift 2 || die "restore: --target-dir needs a value" ;;
        --target-dir=*) target="${1#*=}"; shift ;;
        --time) time="${2:-}"; shift 2 || die "restore: --time needs a value" ;;
        --time=*) time="${1#*=}"; shift ;;
        --repo) repo="${2:-}"; shift 2 || die "restore: --repo needs a value" ;;
        --repo=*) repo="${1#*=}"; shift ;;
        --set) set="${2:-}"; shift 2 || die "restore: --set needs a value" ;;
        --set=*) set="${1#*=}"; shift ;;
        --archive) archive=preserve; shift ;;
        *) die "restore: unknown option '$1' (see ${PROGRAM} help)" ;;
        esac
    done
    [[ -n "${target}" ]] || die "restore: --target-dir DIR is required (a new, empty directory)"
    check_new_target "${target}"
    # --stanza on the command line lands in the restore_command pgBackRest writes.
    local args=(restore "--stanza=${PGBACKREST_STANZA}" "--pg1-path=${target}" "--archive-mode=${archive}")
    [[ -n "${repo}" ]] && args=(--repo="${repo}" "${args[@]}")
    [[ -n "${set}" ]] && args+=("--set=${set}")
    if [[ -n "${time}" ]]; then
        valid_time "${time}" ||
            die "restore: --time must look like 'YYYY-MM-DD HH:MM:SS+00' (with a UTC offset), not '${time}'"
        # Stop before the first transaction that committed after the target, then promote.
        args+=(--type=time "--target=${time}" --target-action=promote)
    fi
    mkdir -p "${target}"
    chmod 0700 "${target}"
    log "restoring ${time:+the state at ${time} }${set:+backup ${set} }${repo:+from repo${repo} }into ${target}"
    if ! pgbr "${args[@]}"; then
        log "error: restore FAILED; ${target} is incomplete, remove it before trying again"
        return 1
    fi
    cat >&2 <<EOF
$(date -u +%Y-%m-%dT%H:%M:%SZ) ${PROGRAM}: restore done into ${target}.
  PostgreSQL replays the archived WAL when it starts there${time:+ up to ${time}} and then promotes.
  WAL archiving is $([[ "${archive}" == off ]] && echo "OFF for this copy (archive_mode=off in postgresql.auto.conf); remove that line when it becomes the new primary" || echo "kept on: this copy pushes a new timeline into the repositories once promoted").
  Next steps: docs/BACKUP_AND_RECOVERY.md, "Restore procedures".
EOF
}

# ---------------------------------------------------------------------------------------------
# restore-test
# ---------------------------------------------------------------------------------------------
pg_bindir() {  # the binaries matching the restored cluster's major version
    local version="$1" pg_ctl
    if [[ -n "${PG_BINDIR:-}" ]]; then
        echo "${PG_BINDIR}"
    elif [[ -x "/usr/lib/postgresql/${version}/bin/pg_ctl" ]]; then
        echo "/usr/lib/postgresql/${version}/bin"
    elif pg_ctl="$(command -v pg_ctl)"; then
        dirname "${pg_ctl}"
    else
        return 1
    fi
}

free_port() {  # a TCP port nothing listens on, for the scratch instance's socket name
    local port
    for ((port = 55432 + RANDOM % 1000; port < 65000; port++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            echo "${port}"
            return 0
        fi
    done
    return 1
}

RT_WORK="" RT_BINDIR="" RT_DATA=""
restore_test_cleanup() {
    if [[ -n "${RT_BINDIR}" && -f "${RT_DATA}/postmaster.pid" ]]; then
        "${RT_BINDIR}/pg_ctl" -D "${RT_DATA}" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    fi
    if [[ -n "${RT_WORK}" && -d "${RT_WORK}" ]]; then
        [[ -f "${RT_WORK}/postgres.log" ]] && cp -f "${RT_WORK}/postgres.log" "${RT_WORK%/*}/last-postgres.log"
        [[ "${BACKUP_RESTORE_TEST_KEEP:-}" == 1 ]] || rm -rf "${RT_WORK}"
    fi
}

scratch_sql() {  # scratch_sql DB SQL -> unaligned rows
    "${RT_BINDIR}/psql" -X -q -v ON_ERROR_STOP=1 -At -h "${RT_WORK}/socket" -p "${RT_PORT}" \
        -U "${PGUSER:-postgres}" -d "$1" -c "$2"
}

primary_sql() {  # primary_sql SQL -> unaligned rows (PGHOST/PGPORT/PGUSER/PGDATABASE)
    "${RT_BINDIR}/psql" -X -q -v ON_ERROR_STOP=1 -At -d "${RT_DB}" -c "$1"
}

RT_PORT="" RT_DB=""
restore_test_checks() {
    local repo="$1" version timeout="${BACKUP_RESTORE_TEST_TIMEOUT:-3600}" deadline preload=""
    local sample="${BACKUP_RESTORE_TEST_SAMPLE_SPANS:-1000}" spans traces projects ids lo hi
    RT_DATA="${RT_WORK}/pgdata"
    mkdir -m 0700 "${RT_DATA}" "${RT_WORK}/socket"

    log "restore-test: [1/6] restoring the latest backup from repo${repo} into ${RT_DATA}"
    pgbr --repo="${repo}" restore "--stanza=${PGBACKREST_STANZA}" "--pg1-path=${RT_DATA}" --archive-mode=off ||
        { log "error: restore-test: restore FAILED"; return 1; }

    version="$(<"${RT_DATA}/PG_VERSION")"
    RT_BINDIR="$(pg_bindir "${version}")" || { log "error: no PostgreSQL ${version} binaries"; return 1; }
    RT_PORT="$(free_port)" || { log "error: restore-test: no free port"; return 1; }
    if [[ -x "${RT_BINDIR}/pg_config" && -e "$("${RT_BINDIR}/pg_config" --pkglibdir)/timescaledb.so" ]]; then
        preload="shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off"
    fi
    # The scratch instance ignores the copied configuration: socket only, in a private
    # directory, no archiving (it must never push WAL into the repositories), small memory.
    cat >"${RT_WORK}/postgresql.conf" <<EOF
listen_addresses = ''
port = ${RT_PORT}
unix_socket_directories = '${RT_WORK}/socket'
hba_file = '${RT_WORK}/pg_hba.conf'
ident_file = '${RT_WORK}/pg_ident.conf'
archive_mode = off
hot_standby = off
max_connections = 20
shared_buffers = 128MB
max_wal_size = 1GB
fsync = off
log_destination = 'stderr'
logging_collector = off
${preload}
EOF
    printf 'local all all trust\n' >"${RT_WORK}/pg_hba.conf"
    : >"${RT_WORK}/pg_ident.conf"

    log "restore-test: [2/6] starting PostgreSQL ${version} on port ${RT_PORT} (socket only) and replaying WAL"
    "${RT_BINDIR}/pg_ctl" -D "${RT_DATA}" -o "-c config_file=${RT_WORK}/postgresql.conf" \
        -l "${RT_WORK}/postgres.log" -w -t "${timeout}" start >/dev/null ||
        { log "error: restore-test: the restored cluster did not start:"; tail -n 20 "${RT_WORK}/postgres.log" >&2; return 1; }
    deadline=$(($(date +%s) + timeout))
    until [[ "$(scratch_sql postgres 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f ]]; do
        (($(date +%s) < deadline)) || { log "error: restore-test: recovery did not finish in ${timeout}s"; return 1; }
        sleep 1
    done

    log "restore-test: [3/6] row counts in database ${RT_DB}"
    if ! { spans="$(scratch_sql "${RT_DB}" 'SELECT count(*) FROM spans')" &&
        traces="$(scratch_sql "${RT_DB}" 'SELECT count(*) FROM traces')" &&
        projects="$(scratch_sql "${RT_DB}" 'SELECT count(*) FROM projects')"; }; then
        log "error: restore-test: the Observatory tables are not readable in ${RT_DB}"
        return 1
    fi
    log "restore-test: restored ${spans} spans, ${traces} traces, ${projects} projects"
    ((projects > 0)) || { log "error: restore-test: the restored database has no project"; return 1; }
    RT_SPANS="${spans}"

    log "restore-test: [4/6] checksum over the ${sample} newest spans, compared with the primary"
    hi="$(scratch_sql "${RT_DB}" 'SELECT coalesce(max(span_rowid), 0) FROM spans')"
    lo=$((hi - sample))
    scratch_sql "${RT_DB}" "SELECT span_rowid, md5(s::text) FROM spans s
        WHERE span_rowid > ${lo} ORDER BY span_rowid" >"${RT_WORK}/restored.md5"
    ids="$(cut -d'|' -f1 "${RT_WORK}/restored.md5" | paste -sd, -)"
    if [[ -z "${ids}" ]]; then
        log "restore-test: no spans to compare"
    elif primary_sql "SELECT span_rowid, md5(s::text) FROM spans s
            WHERE span_rowid IN (${ids}) ORDER BY span_rowid" >"${RT_WORK}/primary.md5" 2>"${RT_WORK}/primary.err"; then
        # A span missing on the primary was deleted since (retention); a span that differs
        # means the backup does not hold what the primary committed.
        local differ
        differ="$(awk -F'|' 'NR == FNR { r[$1] = $2; next } ($1 in r) && r[$1] != $2' \
            "${RT_WORK}/restored.md5" "${RT_WORK}/primary.md5" | wc -l)"
        if ((differ > 0)); then
            log "error: restore-test: ${differ} of the newest spans differ from the primary"
            return 1
        fi
        log "restore-test: spans checksum matches the primary" \
            "($(wc -l <"${RT_WORK}/primary.md5") of $(wc -l <"${RT_WORK}/restored.md5") newest spans compared," \
            "md5 $(cut -d'|' -f2 "${RT_WORK}/restored.md5" | md5sum | cut -c1-12))"
    else
        log "warning: restore-test: primary not reachable, comparison skipped: $(head -n1 "${RT_WORK}/primary.err")"
    fi

    log "restore-test: [5/6] stopping the scratch instance and checking every data page checksum"
    "${RT_BINDIR}/pg_ctl" -D "${RT_DATA}" -m fast -w -t 300 stop >/dev/null ||
        { log "error: restore-test: the scratch instance did not stop cleanly"; return 1; }
    if "${RT_BINDIR}/pg_controldata" "${RT_DATA}" | grep -qE '^Data page checksum version:[[:space:]]+[1-9]'; then
        "${RT_BINDIR}/pg_checksums" --check -D "${RT_DATA}" >"${RT_WORK}/checksums.out" 2>&1 ||
            { log "error: restore-test: data page checksums FAILED:"; tail -n 5 "${RT_WORK}/checksums.out" >&2; return 1; }
        log "restore-test: data page checksums ok"
    else
        log "restore-test: the cluster has no data checksums (initdb --data-checksums); page check skipped"
    fi

    log "restore-test: [6/6] pgbackrest verify of repo${repo}"
    verify_repo "${repo}" || { log "error: restore-test: pgbackrest verify FAILED"; return 1; }
}

cmd_restore_test() {
    local repo=1 start status=0 base="${BACKUP_RESTORE_TEST_DIR:-/var/lib/pgbackrest/restore-test}"
    while (($#)); do
        case "$1" in
        --repo) repo="${2:-}"; shift 2 || die "restore-test: --repo needs a value" ;;
        --repo=*) repo="${1#*=}"; shift ;;
        *) die "restore-test: unknown option '$1'" ;;
        esac
    done
    start="$(date +%s)"
    RT_DB="${BACKUP_DATABASE:-${PGDATABASE:-llm_observatory}}"
    RT_SPANS=""
    mkdir -p "${base}"
    chmod 0700 "${base}"
    RT_WORK="$(mktemp -d "${base}/run.XXXXXX")"
    restore_test_checks "${repo}" || status=1
    restore_test_cleanup
    RT_WORK="" RT_BINDIR=""
    if ((status == 0)); then
        log "restore-test: PASSED"
        record restore_test 0 "${start}" "observatory_restore_test_restored_spans=${RT_SPANS}"
    else
        log "restore-test: FAILED"
        record restore_test 1 "${start}"
    fi
    return "${status}"
}

# ---------------------------------------------------------------------------------------------
on_exit() {
    restore_test_cleanup
    rm -f "${BACKUP_RUNTIME_DIR}/pgbackrest-$$.tmp" "${BACKUP_RUNTIME_DIR}/pgbackrest-$$.out"
}

main() {
    local command="${1:-run}"
    [[ $# -gt 0 ]] && shift
    case "${command}" in
    help | -h | --help) usage 0 ;;
    esac
    if ! backup_env; then
        # A job that cannot even start (no passphrase, bad setting) is a failed job for monitoring.
        case "${command}" in
        run) record backup 1 "$(date +%s)" ;;
        restore-test) record restore_test 1 "$(date +%s)" ;;
        esac
        exit 1
    fi
    trap on_exit EXIT
    case "${command}" in
    run) cmd_run "$@" ;;
    schedule) cmd_schedule ;;
    list | info) cmd_list "$@" ;;
    restore) cmd_restore "$@" ;;
    verify) cmd_verify ;;
    check) cmd_check ;;
    restore-test) cmd_restore_test "$@" ;;
    *) log "unknown command '${command}'"; usage ;;
    esac
}

main "$@"
