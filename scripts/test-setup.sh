#!/usr/bin/env bash
# Prepare this machine for `make test`: install the system tools the tests drive
# (listed in .ci/apt-packages.d/*.txt as "package command" lines) and make sure
# PostgreSQL and Redis answer. Fails loudly when something cannot be provided.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
shopt -s nullglob
for list in .ci/apt-packages.d/*.txt; do
    while read -r pkg cmd _; do
        [[ -z "${pkg}" || "${pkg}" == \#* ]] && continue
        if [[ -n "${cmd:-}" ]]; then
            command -v "${cmd}" >/dev/null 2>&1 || [[ -x "${cmd}" ]] || missing+=("${pkg}")
        else
            dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
        fi
    done < "${list}"
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "test-setup: installing ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "test-setup: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PG_URL="${OBSERVATORY_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}"
REDIS_URL="${OBSERVATORY_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"

if ! psql "${PG_URL}" -qAtc 'select 1' >/dev/null 2>&1; then
    echo "test-setup: PostgreSQL at ${PG_URL} does not answer; trying to start the local cluster"
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        sleep 2
    fi
    psql "${PG_URL}" -qAtc 'select 1' >/dev/null || {
        echo "test-setup: PostgreSQL is not reachable at ${PG_URL}; set OBSERVATORY_TEST_DATABASE_URL" >&2
        exit 1
    }
fi

redis_ping() { .venv/bin/python - "$1" <<'PY'
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()
PY
}
if ! redis_ping "${REDIS_URL}" >/dev/null 2>&1; then
    echo "test-setup: Redis at ${REDIS_URL} does not answer; trying to start one"
    if command -v redis-server >/dev/null 2>&1; then
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
        sleep 1
    fi
    redis_ping "${REDIS_URL}" >/dev/null || {
        echo "test-setup: Redis is not reachable at ${REDIS_URL}; set OBSERVATORY_TEST_REDIS_URL" >&2
        exit 1
    }
fi
echo "test-setup: PostgreSQL and Redis reachable; system tools present"
