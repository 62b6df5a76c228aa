#!/bin/sh
# Rendered by provision for service {{ service.name }} on host {{ host.name }}.
# First start (empty data directory): initdb, the role {{ db_user }} with the password
# from $PG_PASSWORD, the database {{ db_name }} with the postgis extension.
# Every start: exec postgres in the foreground as PID 1.
set -eu

PGDATA=/var/lib/postgresql/data
DB_NAME='{{ db_name }}'
DB_USER='{{ db_user }}'
HBA=/etc/provision/live/pg_hba.conf

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 0700 "$PGDATA"
else
    echo "postgis-entrypoint: must start as root (it drops to postgres)" >&2
    exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${PG_PASSWORD:-}" ]; then
        echo "postgis-entrypoint: PG_PASSWORD is not set: it is needed at first start" >&2
        exit 1
    fi
    echo "postgis-entrypoint: empty data directory, creating the cluster"
    # A first start that fails half way leaves the directory empty again, so the
    # next start retries instead of serving a cluster without role or database.
    init_failed() {
        as_postgres pg_ctl --pgdata="$PGDATA" --silent -m immediate stop 2>/dev/null || true
        find "$PGDATA" -mindepth 1 -delete
        echo "postgis-entrypoint: first start failed, data directory emptied" >&2
    }
    trap init_failed EXIT
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    # A server on the Unix socket only, so no client sees it half set up.
    as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent \
        -o "-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start
    # The password goes from the environment to psql (\getenv): not on a command
    # line, not in a file, not echoed.
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -d postgres \
        -v db_user="$DB_USER" -v db_name="$DB_NAME" <<'SQL'
\getenv pg_password PG_PASSWORD
SELECT format('CREATE ROLE %I', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'db_user') \gexec
ALTER ROLE :"db_user" WITH LOGIN PASSWORD :'pg_password';
\unset pg_password
SELECT format('CREATE DATABASE %I OWNER %I', :'db_name', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db_name') \gexec
\connect :"db_name"
CREATE EXTENSION IF NOT EXISTS postgis;
SQL
    as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent -m fast stop
    trap - EXIT
    echo "postgis-entrypoint: database $DB_NAME ready, owned by $DB_USER"
fi

unset PG_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" \
    -c listen_addresses='*' \
    -c hba_file="$HBA" \
    -c unix_socket_directories=/run/postgresql \
    -c log_destination=stderr \
    "$@"
