#!/usr/bin/env bash
# Throwaway PostgreSQL 15 clusters for development, tests and CI.
#
#   postgres.sh up                   the project cluster: $STATE_DIR/pg on 127.0.0.1:55432
#   postgres.sh down                 stop it
#   postgres.sh start DATA_DIR PORT [CERT KEY]
#                                    start (initdb first if needed) any cluster; idempotent;
#                                    with CERT and KEY (PEM files): TLS on (ssl = on)
#   postgres.sh stop DATA_DIR [MODE] stop a cluster started by `start`; no-op if stopped;
#                                    MODE is pg_ctl's shutdown mode: fast (default), smart
#                                    or immediate (a crash: recovery from the WAL at start)
#   postgres.sh status [DATA_DIR]    exit 0 when running
#   postgres.sh packages             print the Debian packages that are missing
#
# Every cluster listens on 127.0.0.1 only, keeps its unix socket inside its data
# directory, and has role `deskgate` (password `deskgate-dev-only`, LOGIN CREATEDB)
# owning database `deskgate`, so this URL works for all of them:
#   postgres://deskgate:deskgate-dev-only@127.0.0.1:PORT/deskgate
# Local (socket) connections are `trust`; TCP connections need the password (SCRAM).
# With CERT and KEY, copies of them live in the data directory (server.crt, server.key:
# owned by the server user, key mode 0600, as PostgreSQL demands) and TCP clients may use
# TLS; plain TCP stays allowed, so `sslmode` decides.
#
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user and
# owns the data directory. When the postgres user cannot reach DATA_DIR's parent (e.g. a
# checkout under /root), a new cluster lives in /tmp/deskgate-pg-<hash> and DATA_DIR
# becomes a symlink to it.
set -euo pipefail
LOG_TAG=postgres
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

PG_BINDIR=${DESKGATE_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_PACKAGE=postgresql-15
PROJECT_DATA_DIR=$STATE_DIR/pg
PROJECT_PORT=55432
DB_ROLE=deskgate
DB_PASSWORD=deskgate-dev-only
DB_NAME=deskgate
PG_USER=postgres

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

missing_packages() {
    [[ -x $PG_BINDIR/initdb ]] || echo "$PG_PACKAGE"
}

ensure_installed() {
    if [[ ! -x $PG_BINDIR/initdb ]]; then
        apt_install "$PG_PACKAGE"
        [[ -x $PG_BINDIR/initdb ]] || die "$PG_BINDIR/initdb still missing after installing $PG_PACKAGE"
    fi
}

# Run a PostgreSQL server tool as the cluster owner, from / (so that a cwd the postgres
# user cannot read causes no warnings) and with inherited descriptors closed (so that a
# server started through pg_ctl holds neither our lock on fd 9 nor a caller's pipe).
as_owner() {
    if is_root; then
        (cd / && runuser -u "$PG_USER" -- env HOME=/var/lib/postgresql \
            bash -c "$CLOSE_INHERITED_FDS"'exec "$@"' as_owner "$@")
    else
        without_inherited_fds "$@"
    fi
}

owner_can_reach() { # DIR
    if is_root; then
        runuser -u "$PG_USER" -- test -x "$1" 2>/dev/null
    else
        test -x "$1"
    fi
}

# resolve_data_dir DIR — prints the real directory the cluster lives in, creating it
# (or the /tmp fallback plus a symlink) when absent. Sets nothing else.
resolve_data_dir() {
    local dir
    dir=$(realpath -m -- "$1")
    if [[ -L $dir ]]; then
        realpath -m -- "$dir"
        return 0
    fi
    if [[ -d $dir ]]; then
        owner_can_reach "$dir/.." ||
            die "the $PG_USER user cannot reach $dir (a parent directory is not traversable); use a data directory under /tmp or make the parents world-executable"
        printf '%s\n' "$dir"
        return 0
    fi
    [[ ! -e $dir ]] || die "$dir exists and is not a directory"
    local parent
    parent=$(dirname -- "$dir")
    mkdir -p -- "$parent"
    if owner_can_reach "$parent"; then
        mkdir -p -- "$dir"
        printf '%s\n' "$dir"
    else
        local real
        real=/tmp/deskgate-pg-$(short_hash "$dir")
        log "the $PG_USER user cannot reach $parent; keeping the cluster in $real (symlinked from $dir)"
        mkdir -p -- "$real"
        ln -sfn -- "$real" "$dir"
        printf '%s\n' "$real"
    fi
}

# Socket directory: the data directory itself, unless the socket path would exceed the
# 107-byte unix socket limit.
socket_dir() { # REAL_DIR PORT
    local dir=$1 port=$2
    if ((${#dir} + ${#port} + 11 <= 100)); then
        printf '%s\n' "$dir"
    else
        printf '/tmp/deskgate-pgsock-%s\n' "$(short_hash "$dir")"
    fi
}

cluster_running() { # REAL_DIR
    [[ -f $1/PG_VERSION ]] || return 1
    as_owner "$PG_BINDIR/pg_ctl" status -D "$1" >/dev/null 2>&1
}

# Field N of postmaster.pid (4 = port, 5 = socket directory).
pidfile_field() { # REAL_DIR N
    sed -n "${2}p" -- "$1/postmaster.pid" 2>/dev/null
}

psql_super() { # SOCKDIR PORT [psql args...]
    local sock=$1 port=$2
    shift 2
    "$PG_BINDIR/psql" 9>&- -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}

ensure_role_and_db() { # SOCKDIR PORT
    psql_super "$1" "$2" >/dev/null <<SQL
SELECT 'CREATE ROLE $DB_ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE')\gexec
ALTER ROLE $DB_ROLE WITH LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
-- Tests drop their scratch databases WITH (FORCE); an autovacuum worker busy
-- in one belongs to no role, so ending it needs pg_signal_backend.
GRANT pg_signal_backend TO $DB_ROLE;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL
}

lock_cluster() { # REAL_DIR — serialises start/stop of one cluster across processes
    # flock works on a directory descriptor, so no lock file is left behind.
    exec 9<"$1"
    flock -w 120 9 || die "timed out waiting for another postgres.sh working on $1"
}

cmd_start() { # DATA_DIR PORT [CERT KEY]
    local data=$1 port=$2 cert=${3:-} key=${4:-}
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "invalid port: $port"
    fi
    if [[ -n $cert ]]; then
        [[ -r $cert ]] || die "cannot read TLS certificate $cert"
        [[ -r $key ]] || die "cannot read TLS key $key"
    fi
    ensure_installed
    if is_root; then
        id -u "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (is $PG_PACKAGE installed?)"
    fi

    local real
    real=$(resolve_data_dir "$data")
    lock_cluster "$real"

    if cluster_running "$real"; then
        local running_port sock
        running_port=$(pidfile_field "$real" 4)
        sock=$(pidfile_field "$real" 5)
        if [[ $running_port != "$port" ]]; then
            warn "cluster $data is already running on port $running_port, not $port; leaving it as is"
        fi
        sock=${sock:-$(socket_dir "$real" "$running_port")}
        ensure_role_and_db "$sock" "$running_port"
        if [[ -n $cert && $(psql_super "$sock" "$running_port" -At -c 'SHOW ssl') != on ]]; then
            warn "cluster $data is running without TLS; stop it and start it again to turn TLS on"
        fi
        log "already running: $data on 127.0.0.1:$running_port"
        return 0
    fi

    if is_root; then
        chown "$PG_USER:" -- "$real"
    fi
    chmod 700 -- "$real"

    if [[ ! -f $real/PG_VERSION ]]; then
        if [[ -n $(ls -A -- "$real") ]]; then
            die "$data is not empty and holds no cluster (no PG_VERSION); refusing to initdb into it"
        fi
        log "initdb $data"
        local initlog
        if ! initlog=$(as_owner "$PG_BINDIR/initdb" -D "$real" -U postgres \
            --auth-host=scram-sha-256 --auth-local=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-instructions 2>&1); then
            printf '%s\n' "$initlog" >&2
            die "initdb failed for $data"
        fi
    elif is_root && [[ $(stat -c %U -- "$real") != "$PG_USER" || $(stat -c %U -- "$real/PG_VERSION") != "$PG_USER" ]]; then
        log "fixing ownership of $data"
        chown -R "$PG_USER:" -- "$real"
    fi

    # The server reads relative paths from its data directory; copies there are readable by
    # the server user wherever the originals live.
    local tls_opts=""
    if [[ -n $cert ]]; then
        local owner=()
        is_root && owner=(-o "$PG_USER" -g "$(id -gn "$PG_USER")")
        install -m 644 "${owner[@]}" -- "$cert" "$real/server.crt"
        install -m 600 "${owner[@]}" -- "$key" "$real/server.key"
        tls_opts=" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    fi

    local sock logfile
    sock=$(socket_dir "$real" "$port")
    if [[ $sock != "$real" ]]; then
        mkdir -p -- "$sock"
        is_root && chown "$PG_USER:" -- "$sock"
        chmod 700 -- "$sock"
    fi
    logfile=$real/postmaster.log
    log "starting $data on 127.0.0.1:$port${cert:+ (TLS on)}"
    if ! as_owner "$PG_BINDIR/pg_ctl" -D "$real" -l "$logfile" -w -t 60 start \
        -o "-p $port -k '$sock' -c listen_addresses=127.0.0.1$tls_opts" >/dev/null; then
        show_log_tail "$logfile"
        die "could not start PostgreSQL in $data on port $port (is the port taken?)"
    fi
    ensure_role_and_db "$sock" "$port"
    log "running: postgres://$DB_ROLE:***@127.0.0.1:$port/$DB_NAME (data: $real, log: $logfile)"
}

cmd_stop() { # DATA_DIR [MODE]
    local data=$1 mode=${2:-fast} real
    [[ $mode =~ ^(smart|fast|immediate)$ ]] || die "shutdown mode must be smart, fast or immediate, not '$mode'"
    real=$(realpath -m -- "$data")
    if [[ ! -d $real ]]; then
        log "nothing to stop: $data does not exist"
        return 0
    fi
    [[ -x $PG_BINDIR/pg_ctl ]] || die "$PG_BINDIR/pg_ctl missing; nothing can be running"
    lock_cluster "$real"
    if ! cluster_running "$real"; then
        log "not running: $data"
        return 0
    fi
    log "stopping $data ($mode)"
    if ! as_owner "$PG_BINDIR/pg_ctl" -D "$real" -m "$mode" -w -t 60 stop >/dev/null; then
        show_log_tail "$real/postmaster.log"
        die "could not stop PostgreSQL in $data"
    fi
}

cmd_status() { # [DATA_DIR]
    local real
    real=$(realpath -m -- "${1:-$PROJECT_DATA_DIR}")
    if [[ -x $PG_BINDIR/pg_ctl ]] && cluster_running "$real"; then
        echo "running: ${1:-$PROJECT_DATA_DIR} on 127.0.0.1:$(pidfile_field "$real" 4)"
    else
        echo "stopped: ${1:-$PROJECT_DATA_DIR}"
        return 3
    fi
}

case ${1:-} in
start)
    (($# == 3 || $# == 5)) || usage
    cmd_start "$2" "$3" "${4:-}" "${5:-}"
    ;;
stop)
    (($# == 2 || $# == 3)) || usage
    cmd_stop "$2" "${3:-fast}"
    ;;
up)
    (($# == 1)) || usage
    ensure_state_dir
    cmd_start "$PROJECT_DATA_DIR" "$PROJECT_PORT"
    ;;
down)
    (($# == 1)) || usage
    cmd_stop "$PROJECT_DATA_DIR"
    ;;
status)
    cmd_status "${2:-}"
    ;;
packages)
    missing_packages
    ;;
*)
    usage
    ;;
esac
