#!/bin/sh
# First start: initdb with scram-sha-256 for every TCP client (the unix socket, which
# only this container's postgres user reaches, is trusted as in the official image),
# then the role and the database from POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB. Every start: postgres in
# the foreground as PID 1 (docker stop's SIGTERM is a smart shutdown).
# Invariant: the password never appears on a command line (it goes through a file in
# a private temporary directory that is removed at once).
set -eu
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "deskgate-postgres: initialising $PGDATA" >&2
    tmp=$(mktemp -d)
    umask 077
    printf '%s\n' "$POSTGRES_PASSWORD" >"$tmp/pw"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$tmp/pw" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -rf "$tmp"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        createdb -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
# The socket in /tmp: with a read-only root, /tmp is the tmpfs postgres can write.
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
