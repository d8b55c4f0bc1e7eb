# shellcheck shell=bash
# Shared helpers for the deskgate service scripts. Source it; do not run it.
#
#   LOG_TAG=postgres
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides: REPO (repository root), STATE_DIR (data, logs, pid files; gitignored),
# log/warn/die, apt_install, wait_for, pid-file helpers, start_daemon.

if [[ -n ${DESKGATE_LIB_LOADED:-} ]]; then
    return 0
fi
DESKGATE_LIB_LOADED=1

# Repository root: the parent of the directory holding this file (works without git).
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
STATE_DIR=${DESKGATE_STATE_DIR:-$REPO/.deskgate}
LOG_TAG=${LOG_TAG:-deskgate}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
    printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

ensure_state_dir() {
    if [[ ! -d $STATE_DIR ]]; then
        mkdir -p -- "$STATE_DIR"
        # Readable/traversable so helper users (e.g. `postgres`) can reach files below it.
        chmod 755 -- "$STATE_DIR"
    fi
}

# Print the last lines of a log file to stderr (for error reports).
show_log_tail() {
    local file=$1 lines=${2:-30}
    if [[ -r $file ]]; then
        printf '[%s] --- last %s lines of %s ---\n' "$LOG_TAG" "$lines" "$file" >&2
        tail -n "$lines" -- "$file" >&2 || true
        printf '[%s] --- end of %s ---\n' "$LOG_TAG" "$file" >&2
    fi
}

# ---------------------------------------------------------------- packages (apt)

# True when the Debian package is installed (not merely known or half-configured).
pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

APT_RUNNER=()
# As root apt-get runs directly; otherwise through passwordless sudo, if available.
set_apt_runner() { # PACKAGES (for the message)
    if is_root; then
        APT_RUNNER=(env DEBIAN_FRONTEND=noninteractive)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        APT_RUNNER=(sudo -n env DEBIAN_FRONTEND=noninteractive)
    else
        die "missing packages: $1; install them (sudo apt-get install $1) or run as root"
    fi
}

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# `apt-get update` at most once per run: a marker younger than an hour counts as "this run"
# (the scripts of one `services.sh up` are separate processes).
apt_update_once() {
    ensure_state_dir
    local marker=$STATE_DIR/apt-updated
    if [[ -f $marker ]] && [[ -n $(find "$marker" -mmin -60 2>/dev/null) ]]; then
        return 0
    fi
    local try
    for try in 1 2 3; do
        log "apt-get update (try $try)"
        if "${APT_RUNNER[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update >>"$STATE_DIR/apt.log" 2>&1; then
            touch -- "$marker"
            return 0
        fi
        sleep $((try * 5))
    done
    show_log_tail "$STATE_DIR/apt.log"
    die "apt-get update failed (log: $STATE_DIR/apt.log)"
}

# apt_install PKG... — installs the packages that are missing; no-op (and no network)
# when all are installed.
apt_install() {
    local missing=() p
    for p in "$@"; do
        [[ -n $p ]] || continue
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get (this script supports Debian/Ubuntu)"
    set_apt_runner "${missing[*]}"
    ensure_state_dir
    apt_update_once
    log "apt-get install ${missing[*]}"
    if ! "${APT_RUNNER[@]}" apt-get install "${APT_OPTS[@]}" --no-install-recommends "${missing[@]}" >>"$STATE_DIR/apt.log" 2>&1; then
        show_log_tail "$STATE_DIR/apt.log"
        die "apt-get install ${missing[*]} failed (log: $STATE_DIR/apt.log)"
    fi
}

# ---------------------------------------------------------------- waiting

# wait_for [--pid PID] TIMEOUT_SECONDS DESCRIPTION CMD [ARGS...]
# Polls CMD every 0.2 s until it succeeds. With --pid, gives up early when PID dies.
wait_for() {
    local pid=""
    if [[ ${1:-} == --pid ]]; then
        pid=$2
        shift 2
    fi
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            warn "$what: process $pid exited while waiting"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "$what: not ready after ${timeout}s"
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- pid files

# pid_running PIDFILE COMM — prints the pid and succeeds when the pid file names a live
# process whose /proc/PID/comm is COMM (guards against pid reuse).
pid_running() {
    local file=$1 comm=$2 pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    printf '%s\n' "$pid"
}

# stop_pidfile PIDFILE COMM NAME [TIMEOUT] — SIGTERM, wait, then SIGKILL; removes the file.
stop_pidfile() {
    local file=$1 comm=$2 name=$3 timeout=${4:-20} pid
    if ! pid=$(pid_running "$file" "$comm"); then
        rm -f -- "$file"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "$name (pid $pid) still running after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f -- "$file"
}

# Shell prelude (for `bash -c`) closing every descriptor above 2.
# shellcheck disable=SC2016 # expanded by the inner shell on purpose
CLOSE_INHERITED_FDS='for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then exec {n}>&-; fi; done; '

# start_daemon PIDFILE LOGFILE CMD [ARGS...] — starts CMD in its own session (so Ctrl-C
# on make or a CI process-group kill does not take it down), detached from our stdio
# (so callers reading our output through a pipe do not hang), and writes its pid.
start_daemon() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f -- "$pidfile"
    printf '\n=== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logfile"
    # The inner shell closes inherited descriptors, writes its own pid and then execs,
    # so the pid is the daemon's.
    # shellcheck disable=SC2016 # expanded by the inner shell on purpose
    setsid bash -c "$CLOSE_INHERITED_FDS"'echo "$$" >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
    for _ in $(seq 1 50); do
        [[ -s $pidfile ]] && break
        sleep 0.05
    done
    [[ -s $pidfile ]] || die "could not start $1 (no pid file $pidfile; log: $logfile)"
    cat -- "$pidfile"
}

# without_inherited_fds CMD [ARGS...] — runs CMD with every file descriptor above 2
# closed. Daemons must not keep a pipe that a caller (make, CI) reads until EOF.
without_inherited_fds() {
    # shellcheck disable=SC2016 # expanded by the inner shell on purpose
    bash -c "$CLOSE_INHERITED_FDS"'exec "$@"' without_inherited_fds "$@"
}

short_hash() { printf '%s' "$1" | sha256sum | cut -c1-12; }

# Users of the images the scripts import (test-base, desktop): root, desk (1000:1000),
# nobody. Part of each image's recipe hash.
IMAGE_PASSWD='root:x:0:0:root:/root:/bin/sh
desk:x:1000:1000:desk:/home/desk:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
'
IMAGE_GROUP='root:x:0:
desk:x:1000:
nogroup:x:65534:
'

# import_rootfs ROOT IMAGE [docker import options...]: writes the users into ROOT, sets
# the usual permissions (sticky /tmp, private /root, /home/desk for uid 1000), and
# imports it as IMAGE with every file owned by root, whether or not we run as root.
import_rootfs() {
    local root=$1 image=$2
    shift 2
    printf '%s' "$IMAGE_PASSWD" >"$root/etc/passwd"
    printf '%s' "$IMAGE_GROUP" >"$root/etc/group"
    chmod 644 "$root/etc/passwd" "$root/etc/group"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    local tar_owner=(--numeric-owner)
    if is_root; then
        chown -R 0:0 "$root"
        chown 1000:1000 "$root/home/desk"
    else
        tar_owner+=(--owner=0 --group=0)
        chmod 1777 "$root/home/desk"
    fi
    tar -C "$root" "${tar_owner[@]}" -cf - . | docker import "$@" - "$image" >/dev/null
}

# image_label IMAGE LABEL: the label's value on IMAGE (empty if no such image or label).
image_label() {
    docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# replace_image IMAGE LABEL SPEC BUILD_COMMAND...: runs BUILD_COMMAND (which builds IMAGE
# labelled LABEL=SPEC) and removes the image it replaced, if nothing uses it any more.
replace_image() {
    local image=$1 label=$2 spec=$3 old_id current
    shift 3
    old_id=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [[ -n $old_id ]]; then
        current=$(image_label "$image" "$label")
        log "$image exists but is out of date (spec '${current:-none}', want $spec); rebuilding"
    fi
    "$@"
    if [[ -n $old_id ]] && [[ $(docker image inspect --format '{{.Id}}' "$image") != "$old_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
}
