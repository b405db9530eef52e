#!/usr/bin/env bash
# Generate every secret the production stack needs, as files in secrets/ (git-ignored).
#
# usage: scripts/generate-secrets.sh [--force] [--dir DIR] [--owner UID:GID]
#                                    [--with-replica] [--redis-sentinel] [--quiet]
#
#   --force           replace existing secret files (the old ones are moved to
#                     DIR/backup-<timestamp>/ first); without it the script refuses to
#                     overwrite anything and changes nothing
#   --dir DIR         where to write (default: secrets/ at the repository root)
#   --owner UID:GID   owner of the files when run as root (default 10001:10001, the account the
#                     containers run as; docs/PRODUCTION.md "Users and file ownership")
#   --with-replica    database_read_url.txt points at the read replica (profile with-replica)
#                     instead of the primary
#   --redis-sentinel  redis_url.txt uses the three Sentinels (profile with-ha)
#
# Generated values are random letters and digits from /dev/urandom (safe inside URLs and config
# files without quoting); files have mode 0600 in a 0700 directory. Values that only a third party
# can issue (S3 keys, SMTP password, Slack webhook, PagerDuty key) are written as placeholders
# starting with "CHANGE-ME"; replace them by hand (docs/SECRETS_MANAGEMENT.md).
set -Eeuo pipefail
umask 077

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${repo_root}/secrets"
force=0
owner="10001:10001"
with_replica=0
redis_sentinel=0
quiet=0

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1 ;;
        --dir) dir="${2:?--dir needs a value}"; shift ;;
        --owner) owner="${2:?--owner needs UID:GID}"; shift ;;
        --with-replica) with_replica=1 ;;
        --redis-sentinel) redis_sentinel=1 ;;
        --quiet) quiet=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "generate-secrets: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ ! "${owner}" =~ ^[0-9]+:[0-9]+$ ]]; then
    echo "generate-secrets: --owner must be numeric UID:GID, got ${owner}" >&2
    exit 2
fi

say() { [[ ${quiet} -eq 1 ]] || echo "$@"; }

# Letters and digits only: 62 symbols, 5.95 bits each.
random_token() {
    local length="$1" chars=""
    while [[ ${#chars} -lt ${length} ]]; do
        chars+="$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${chars:0:${length}}"
}

SECRET_FILES=(
    postgres_password.txt replication_password.txt redis_password.txt
    database_url.txt database_read_url.txt redis_url.txt
    observatory_secret_key.txt initial_admin_key.txt
    grafana_admin_password.txt grafana_db_password.txt
    pgbackrest_cipher_pass.txt s3_access_key.txt s3_secret_key.txt
    smtp_password.txt slack_webhook_url.txt pagerduty_routing_key.txt
)
TLS_FILES=(tls/ca.crt tls/ca.key tls/server.crt tls/server.key)

existing=()
for f in "${SECRET_FILES[@]}" "${TLS_FILES[@]}"; do
    [[ -e "${dir}/${f}" ]] && existing+=("${f}")
done
if ((${#existing[@]})) && [[ ${force} -eq 0 ]]; then
    echo "generate-secrets: ${dir} already holds ${#existing[@]} secret file(s) (${existing[0]}, ...)." >&2
    echo "generate-secrets: refusing to overwrite them; use scripts/rotate-secrets.sh to change" >&2
    echo "generate-secrets: secrets of a running stack, or --force to replace them all." >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "generate-secrets: openssl is required" >&2; exit 1; }

mkdir -p "${dir}/tls"
chmod 0700 "${dir}" "${dir}/tls"
if ((${#existing[@]})); then
    backup="${dir}/backup-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "${backup}/tls"
    chmod 0700 "${backup}" "${backup}/tls"
    for f in "${existing[@]}"; do mv "${dir}/${f}" "${backup}/${f}"; done
    say "generate-secrets: previous files moved to ${backup}"
fi

write_secret() {  # write_secret NAME VALUE
    local path="${dir}/$1"
    printf '%s\n' "$2" >"${path}.tmp"
    chmod 0600 "${path}.tmp"
    mv "${path}.tmp" "${path}"
}

postgres_password="$(random_token 40)"
replication_password="$(random_token 40)"
app_db_password="$(random_token 40)"
redis_password="$(random_token 40)"
grafana_db_password="$(random_token 40)"

write_secret postgres_password.txt "${postgres_password}"
write_secret replication_password.txt "${replication_password}"
write_secret redis_password.txt "${redis_password}"
write_secret grafana_db_password.txt "${grafana_db_password}"

# The application connects as role `observatory` through PgBouncer, with TLS.
write_secret database_url.txt \
    "postgresql://observatory:${app_db_password}@pgbouncer:6432/llm_observatory?sslmode=require"
if [[ ${with_replica} -eq 1 ]]; then
    read_db="llm_observatory_ro"
else
    read_db="llm_observatory"
fi
write_secret database_read_url.txt \
    "postgresql://observatory:${app_db_password}@pgbouncer:6432/${read_db}?sslmode=require"
if [[ ${redis_sentinel} -eq 1 ]]; then
    write_secret redis_url.txt \
        "redis+sentinel://:${redis_password}@redis-sentinel-1:26379,redis-sentinel-2:26379,redis-sentinel-3:26379/mymaster/0"
else
    write_secret redis_url.txt "redis://:${redis_password}@redis-master:6379/0"
fi

write_secret observatory_secret_key.txt "$(random_token 64)"
write_secret initial_admin_key.txt "obs_$(random_token 48)"
write_secret grafana_admin_password.txt "$(random_token 32)"
# AES-256-CBC passphrase of the pgBackRest repository. Keep a copy outside this server:
# without it no backup can be restored.
write_secret pgbackrest_cipher_pass.txt "$(random_token 64)"

# Issued by third parties: placeholders until you paste the real values.
write_secret s3_access_key.txt "CHANGE-ME-s3-access-key-from-your-object-storage-provider"
write_secret s3_secret_key.txt "CHANGE-ME-s3-secret-key-from-your-object-storage-provider"
write_secret smtp_password.txt "CHANGE-ME-smtp-password-from-your-mail-provider"
write_secret slack_webhook_url.txt "CHANGE-ME-https://hooks.slack.com/services/T000/B000/XXXX"
write_secret pagerduty_routing_key.txt "CHANGE-ME-pagerduty-events-v2-routing-key"

# A private CA and a server certificate (ECDSA P-256) for TLS inside the stack (PostgreSQL,
# PgBouncer).
san="DNS:timescaledb-primary,DNS:timescaledb-replica,DNS:pgbouncer,DNS:llm-observatory-db-primary"
san+=",DNS:llm-observatory-db-replica,DNS:llm-observatory-pgbouncer,DNS:localhost,IP:127.0.0.1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -days 3650 \
    -subj "/CN=LLM Observatory internal CA" \
    -keyout "${dir}/tls/ca.key" -out "${dir}/tls/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes \
    -subj "/CN=timescaledb-primary" \
    -keyout "${dir}/tls/server.key" -out "${dir}/tls/server.csr" 2>/dev/null
openssl x509 -req -sha256 -days 825 -in "${dir}/tls/server.csr" \
    -CA "${dir}/tls/ca.crt" -CAkey "${dir}/tls/ca.key" -CAcreateserial \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "${san}") \
    -out "${dir}/tls/server.crt" 2>/dev/null
rm -f "${dir}/tls/server.csr" "${dir}/tls/ca.srl"
chmod 0600 "${dir}"/tls/*

if [[ $(id -u) -eq 0 ]]; then
    chown -R "${owner}" "${dir}"
    say "generate-secrets: files owned by ${owner} (the containers' user), mode 0600"
else
    say "generate-secrets: not root, files stay owned by $(id -u):$(id -g); the init-permissions"
    say "generate-secrets: service of the compose file hands them to the stack account at start"
fi

say "generate-secrets: wrote ${#SECRET_FILES[@]} secrets and the internal TLS certificate to ${dir}"
say "generate-secrets: replace the CHANGE-ME placeholders (S3, SMTP, Slack, PagerDuty) before going live"
say "generate-secrets: the initial admin API key is in ${dir}/initial_admin_key.txt"
