#!/bin/sh
# Rendered by provision for service {{ service.name }} on host {{ host.name }}.
# Every start, as root: the password of the role DB_USER comes from the
# read-only secret file /run/secrets/PG_PASSWORD (never from the environment).
# On a server that listens on the Unix socket only, the role gets that password
# (a changed secret is rolled out, no data touched) and the database DB_NAME with
# the postgis extension is made when missing. First start (an empty data
# directory): initdb before that. Then exec postgres in the foreground as PID 1,
# as user postgres, whose environment never held the password.
set -eu

PGDATA=/var/lib/postgresql/data
DB_NAME={{ db_name | shell }}
DB_USER={{ db_user | shell }}
SECRET=/run/secrets/PG_PASSWORD
HBA=/etc/provision/live/pg_hba.conf

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

say() {
    printf 'postgis-entrypoint: %s\n' "$*"
}

if [ "$(id -u)" != 0 ]; then
    say "must start as root (it drops to postgres)" >&2
    exit 1
fi
if [ ! -f "$SECRET" ]; then
    say "no password file $SECRET (provision mounts it read-only)" >&2
    exit 1
fi
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"

# Set only when this start made the cluster in a directory that was empty.
fresh=
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # Anything already here (files without PG_VERSION, a half-copied cluster, a
    # mount's lost+found) is someone's data: never initialise over it, never
    # delete it.
    if [ -n "$(ls -A "$PGDATA")" ]; then
        say "$PGDATA holds files but no PostgreSQL cluster (no PG_VERSION): left as it is; empty it or restore a cluster into it" >&2
        exit 1
    fi
    say "empty data directory, creating the cluster"
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    fresh=1
fi

# Armed only now: a failed first start empties what initdb made here, so the
# next start retries instead of serving a cluster without role or database; a
# failed later start only stops the socket-only server.
on_failure() {
    as_postgres pg_ctl --pgdata="$PGDATA" --silent -m fast stop 2>/dev/null || true
    if [ -n "$fresh" ]; then
        find "$PGDATA" -mindepth 1 -delete
        say "first start failed, the cluster it created was removed" >&2
    fi
}
trap on_failure EXIT

# A server on the Unix socket only, so no client sees it half set up or with
# the previous password.
as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent \
    -o "-c listen_addresses='' -c unix_socket_directories=/run/postgresql -c hba_file=$HBA" start

# The password goes from the file to psql's environment only (\getenv): not on
# a command line, not in the server's environment, not echoed, and no failing
# statement that holds it is written to the log. The x keeps trailing newlines.
password=$(cat "$SECRET"; printf x)
password=${password%x}
(
    PG_PASSWORD=$password
    export PG_PASSWORD
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -d postgres \
        -v db_user="$DB_USER" -v db_name="$DB_NAME" <<'SQL'
\set VERBOSITY terse
\set SHOW_CONTEXT never
SET log_min_error_statement = panic;
SET log_statement = none;
\getenv pg_password PG_PASSWORD
SELECT format('CREATE ROLE %I', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'db_user') \gexec
ALTER ROLE :"db_user" WITH LOGIN PASSWORD :'pg_password';
\unset pg_password
SELECT format('CREATE DATABASE %I OWNER %I', :'db_name', :'db_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db_name') \gexec
SQL
)
unset password
# PGDATABASE is taken as a plain name, where psql's -d and \connect would read
# a name holding `=` as connection options.
(
    PGDATABASE=$DB_NAME
    export PGDATABASE
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h /run/postgresql \
        -c 'CREATE EXTENSION IF NOT EXISTS postgis'
)
as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent -m fast stop
trap - EXIT
say "database $DB_NAME ready, owned by $DB_USER, whose password follows $SECRET"

unset PG_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" \
    -c listen_addresses='*' \
    -c hba_file="$HBA" \
    -c unix_socket_directories=/run/postgresql \
    -c log_destination=stderr \
    "$@"
