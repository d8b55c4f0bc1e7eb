#!/usr/bin/env bash
# All real services deskgate's tests and local runs need, idempotently.
#
#   services.sh [up]   install what is missing, start PostgreSQL (127.0.0.1:55432),
#                      Docker (+ test and desktop images) and anvil (127.0.0.1:58545),
#                      install playwright-core, and write .deskgate/services.env
#   services.sh down   stop anvil, PostgreSQL and dockerd (dockerd only if we started it)
#   services.sh env    print the path of services.env
#
# services.env holds `export KEY=VALUE` lines (no quotes): source it from bash, or parse
# it (the Rust test support does).
set -euo pipefail
LOG_TAG=services
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

SCRIPTS=$REPO/scripts
ENV_FILE=$STATE_DIR/services.env

# Debian packages the Rust build needs: pkg-config for -sys crates that probe for system libraries.
# ffmpeg-sys-next (VP8 encoder) needs pkg-config, the libav* headers and
# libclang for its bindgen step. The ffmpeg CLI is what the video encode bench
# (cargo bench -p deskgate-media --bench video_encode) measures itself against.
BUILD_PACKAGES="pkg-config libavcodec-dev libavformat-dev libavutil-dev libclang-dev ffmpeg"

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# One apt transaction for everything missing (apt-get update runs only if needed).
install_prerequisites() {
    local pkgs=()
    local p
    # shellcheck disable=SC2086 # word list on purpose
    for p in $BUILD_PACKAGES; do
        pkg_installed "$p" || pkgs+=("$p")
    done
    local s
    for s in postgres docker anvil desktop; do
        while IFS= read -r p; do
            [[ -n $p ]] && pkgs+=("$p")
        done < <("$SCRIPTS/$s.sh" packages)
    done
    if ((${#pkgs[@]})); then
        apt_install "${pkgs[@]}"
    fi
}

write_env_file() {
    local anvil_bin solcjs line
    while IFS= read -r line; do
        case $line in
        ANVIL_BIN=*) anvil_bin=${line#ANVIL_BIN=} ;;
        SOLCJS=*) solcjs=${line#SOLCJS=} ;;
        esac
    done < <("$SCRIPTS/anvil.sh" paths)
    # desktop.sh paths: DESKTOP_IMAGE=..., NOVNC_DIR=..., ... -> export DESKGATE_DESKTOP_IMAGE=...
    local desktop_env
    desktop_env=$("$SCRIPTS/desktop.sh" paths | sed -n 's/^\([A-Z_]*\)=\(.*\)$/export DESKGATE_\1=\2/p')
    local tmp
    tmp=$(mktemp "$STATE_DIR/.services.env.XXXXXX")
    cat >"$tmp" <<EOF
export DESKGATE_DATABASE_URL=postgres://deskgate:deskgate-dev-only@127.0.0.1:55432/deskgate
export DESKGATE_PG_BINDIR=/usr/lib/postgresql/15/bin
export DESKGATE_TEST_PG_SCRIPT=$SCRIPTS/postgres.sh
export DOCKER_HOST=unix:///var/run/docker.sock
export DESKGATE_TEST_IMAGE=deskgate/test-base:local
export DESKGATE_RPC_URL=http://127.0.0.1:58545
export DESKGATE_CHAIN_ID=31337
export DESKGATE_ANVIL_BIN=$anvil_bin
export DESKGATE_SOLCJS=$solcjs
$desktop_env
EOF
    chmod 644 "$tmp"
    mv -f -- "$tmp" "$ENV_FILE"
}

cmd_up() {
    local start=${EPOCHREALTIME/./}
    ensure_state_dir
    # One `up` at a time (parallel make targets, two terminals).
    exec 8>"$STATE_DIR/services.lock"
    flock -w 600 8 || die "another services.sh up/down holds $STATE_DIR/services.lock"

    install_prerequisites
    "$SCRIPTS/postgres.sh" up 8>&-
    "$SCRIPTS/docker.sh" up 8>&-
    # Desktop image (needs Docker) and playwright-core for the media tests.
    "$SCRIPTS/desktop.sh" up 8>&-
    "$SCRIPTS/anvil.sh" up 8>&-
    write_env_file

    log "postgres  postgres://deskgate:***@127.0.0.1:55432/deskgate (data: $STATE_DIR/pg)"
    log "docker    unix:///var/run/docker.sock (test image deskgate/test-base:local)"
    log "desktop   image ${DESKGATE_DESKTOP_IMAGE:-deskgate/desktop:local}, chromium + playwright-core ($REPO/.tools/browser)"
    log "anvil     http://127.0.0.1:58545 (chain id 31337)"
    log "env       $ENV_FILE"
    local ms=$(((${EPOCHREALTIME/./} - start) / 1000))
    log "up in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

cmd_down() {
    ensure_state_dir
    exec 8>"$STATE_DIR/services.lock"
    flock -w 600 8 || die "another services.sh up/down holds $STATE_DIR/services.lock"
    "$SCRIPTS/anvil.sh" down 8>&-
    "$SCRIPTS/postgres.sh" down 8>&-
    "$SCRIPTS/docker.sh" down 8>&-
    log "down"
}

case ${1:-up} in
up) cmd_up ;;
down) cmd_down ;;
env) printf '%s\n' "$ENV_FILE" ;;
*) usage ;;
esac
