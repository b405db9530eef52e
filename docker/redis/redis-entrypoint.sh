#!/bin/sh
# Start Redis or Sentinel from the read-only configuration plus the password secret.
#
#   redis-entrypoint.sh master   [redis-server options...]
#   redis-entrypoint.sh replica  [redis-server options...]   (replicaof $REDIS_MASTER_HOST)
#   redis-entrypoint.sh sentinel [redis-sentinel options...]
#
# The password never appears on a command line: it is written into the runtime copy of the
# configuration (mode 0600, on a tmpfs). Paths can be moved for tests and VM installs:
#   REDIS_CONF (default /usr/local/etc/redis/redis.conf), SENTINEL_CONF
#   (/usr/local/etc/redis/sentinel.conf), REDIS_PASSWORD_FILE (/run/secrets/redis_password),
#   REDIS_RUNTIME_DIR (/run/redis), REDIS_DATA_DIR (/data).
set -eu

role="${1:-master}"
[ $# -gt 0 ] && shift
runtime="${REDIS_RUNTIME_DIR:-/run/redis}"
password_file="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
umask 077
mkdir -p "${runtime}"
password="$(cat "${password_file}")"
case "${password}" in
    *[!A-Za-z0-9_-]* | "") echo "redis-entrypoint: ${password_file} is empty or has characters other than [A-Za-z0-9_-]" >&2; exit 1 ;;
esac

case "${role}" in
master | replica)
    conf="${runtime}/redis.conf"
    # REDIS_DATA_DIR moves the snapshot directory (the `dir` line) for VM installs and tests.
    sed "s#^dir .*#dir ${REDIS_DATA_DIR:-/data}#" "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" >"${conf}"
    {
        echo ""
        echo "# added by redis-entrypoint.sh"
        echo "requirepass ${password}"
        echo "masterauth ${password}"
        if [ "${role}" = replica ]; then
            echo "replicaof ${REDIS_MASTER_HOST:-redis-master} ${REDIS_MASTER_PORT:-6379}"
        fi
    } >>"${conf}"
    exec redis-server "${conf}" "$@"
    ;;
sentinel)
    conf="${runtime}/sentinel.conf"
    cat "${SENTINEL_CONF:-/usr/local/etc/redis/sentinel.conf}" >"${conf}"
    {
        echo ""
        echo "# added by redis-entrypoint.sh"
        echo "requirepass ${password}"
        echo "sentinel auth-pass mymaster ${password}"
    } >>"${conf}"
    exec redis-server "${conf}" --sentinel "$@"
    ;;
*)
    echo "usage: redis-entrypoint.sh master|replica|sentinel [options]" >&2
    exit 2
    ;;
esac
