#!/bin/sh
# Write PgBouncer's auth_file from the secrets, then run PgBouncer in the foreground.
#
# Paths can be moved for tests and VM installs: PGBOUNCER_INI (/etc/pgbouncer/pgbouncer.ini),
# SECRETS_DIR (/run/secrets), PGBOUNCER_AUTH_FILE (/run/pgbouncer/userlist.txt; must match
# auth_file in the ini). A restart re-reads the secrets, which is how rotate-secrets.sh applies
# a new database password here.
set -eu

secrets="${SECRETS_DIR:-/run/secrets}"
auth_file="${PGBOUNCER_AUTH_FILE:-/run/pgbouncer/userlist.txt}"
umask 077
mkdir -p "$(dirname "${auth_file}")"

# postgresql://observatory:<password>@host:port/db?...  ->  observatory, <password>
dsn="$(cat "${secrets}/database_url")"
user="$(printf '%s' "${dsn}" | sed -E 's#^[a-z+]+://([^:/@]+):.*$#\1#')"
password="$(printf '%s' "${dsn}" | sed -E 's#^[a-z+]+://[^:/@]+:([^@]*)@.*$#\1#')"
if [ -z "${user}" ] || [ "${user}" = "${dsn}" ] || [ -z "${password}" ] || [ "${password}" = "${dsn}" ]; then
    echo "pgbouncer-entrypoint: cannot read user and password from ${secrets}/database_url" >&2
    exit 1
fi
tmp="${auth_file}.tmp"
printf '"%s" "%s"\n' "${user}" "${password}" >"${tmp}"
if [ -r "${secrets}/grafana_db_password" ]; then
    printf '"grafana_reader" "%s"\n' "$(cat "${secrets}/grafana_db_password")" >>"${tmp}"
fi
mv "${tmp}" "${auth_file}"

exec pgbouncer "${PGBOUNCER_INI:-/etc/pgbouncer/pgbouncer.ini}" "$@"
