#!/bin/sh
# Minimal stand-in for the official postgres image's entrypoint: POSTGRES_PASSWORD / POSTGRES_USER / POSTGRES_DB,
# initdb on first start and then, as the official image does, the *.sql and *.sh of /docker-entrypoint-initdb.d in
# order against a server listening on its socket only; then postgres in the foreground as PID 1 (so `docker stop`
# shuts it down cleanly).
# Started as root it owns PGDATA to postgres (70) and drops to it; started as a user (`user: "70:70"`) it runs as
# that user, whose PGDATA must already be its own (prodg hands the folder over before the first start).
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
user=${POSTGRES_USER:-postgres}
mkdir -p "$PGDATA"
if [ "$(id -u)" = 0 ]; then
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
else
  as_postgres=""
fi
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  pwfile=$(mktemp); printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"; [ -z "$as_postgres" ] || chown postgres "$pwfile"
  $as_postgres "$bin/initdb" -D "$PGDATA" -U "$user" \
    --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  db=${POSTGRES_DB:-$user}
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | $as_postgres "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
  if [ -n "$(ls -A /docker-entrypoint-initdb.d 2>/dev/null)" ]; then
    $as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sql) echo "entrypoint: running $f"
               $as_postgres "$bin/psql" -X -q -v ON_ERROR_STOP=1 -U "$user" -d "$db" -f "$f" ;;
        *.sh) echo "entrypoint: sourcing $f"; . "$f" ;;
        *) echo "entrypoint: ignoring $f" ;;
      esac
    done
    $as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi
exec $as_postgres "$bin/postgres" -D "$PGDATA" "$@"
