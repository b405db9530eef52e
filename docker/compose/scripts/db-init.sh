#!/usr/bin/env bash
# First-start initialisation of the production database (run once by the official entrypoint
# from /docker-entrypoint-initdb.d, as the database superuser over the local socket).
#
# Creates, with passwords read from the secret files (never from the command line):
#   observatory     the application role (password = the one in database_url.txt); owns
#                   the database llm_observatory so migrations can create the schema
#   replicator      streaming replication (replication_password.txt)
#   grafana_reader  read-only: SELECT on the dashboard tables, pg_monitor for dashboards and
#                   postgres-exporter (grafana_db_password.txt)
# and the pg_stat_statements extension. Safe to run again: every step is idempotent.
#
# Outside the container (tests, a VM install) point it elsewhere with SECRETS_DIR, PGHOST,
# PGPORT, PGUSER and POSTGRES_DB.
set -Eeuo pipefail

secrets="${SECRETS_DIR:-/run/secrets}"
db="${POSTGRES_DB:-llm_observatory}"
superuser="${POSTGRES_USER:-${PGUSER:-postgres}}"

url_password() {  # the password part of postgresql://user:password@host/db
    sed -E 's#^[a-z+]+://[^:/@]+:([^@]*)@.*$#\1#' "$1"
}

OBS_APP_PASSWORD="$(url_password "${secrets}/database_url")"
OBS_REPLICATION_PASSWORD="$(<"${secrets}/replication_password")"
OBS_GRAFANA_PASSWORD="$(<"${secrets}/grafana_db_password")"
export OBS_APP_PASSWORD OBS_REPLICATION_PASSWORD OBS_GRAFANA_PASSWORD

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${superuser}" --dbname "${db}" <<'SQL'
\getenv app_pw OBS_APP_PASSWORD
\getenv repl_pw OBS_REPLICATION_PASSWORD
\getenv grafana_pw OBS_GRAFANA_PASSWORD
-- Passwords must not reach the server log (log_statement = 'ddl') or pg_stat_statements.
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET password_encryption = 'scram-sha-256';

SELECT format('CREATE ROLE observatory LOGIN PASSWORD %L', :'app_pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'observatory') \gexec
SELECT format('CREATE ROLE replicator LOGIN REPLICATION PASSWORD %L', :'repl_pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SELECT format('CREATE ROLE grafana_reader LOGIN PASSWORD %L', :'grafana_pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') \gexec

ALTER ROLE observatory LOGIN PASSWORD :'app_pw' CONNECTION LIMIT 400;
ALTER ROLE replicator LOGIN REPLICATION PASSWORD :'repl_pw' CONNECTION LIMIT 10;
ALTER ROLE grafana_reader LOGIN PASSWORD :'grafana_pw' CONNECTION LIMIT 20;
ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '60s';

SELECT format('ALTER DATABASE %I OWNER TO observatory', current_database()) \gexec
ALTER SCHEMA public OWNER TO observatory;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO observatory', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO grafana_reader', current_database()) \gexec
GRANT USAGE ON SCHEMA public TO grafana_reader;
-- SELECT on the dashboard tables only (never api_keys or audit_log) is granted by the
-- application's migration 0007_grafana_reader once the tables exist.
GRANT pg_monitor TO grafana_reader;

CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
echo "db-init: roles observatory, replicator, grafana_reader ready in ${db}"
