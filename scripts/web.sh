#!/usr/bin/env bash
# The web client in web/ (TypeScript, Vite), which the gate embeds at build time.
#
#   web.sh build   npm ci (when web/package-lock.json changed) and vite build into
#                  web/dist, printing the JS a browser loads before a desktop
#   web.sh test    the page's unit tests (Vitest)
#
# Needs Node.js 18 or later and npm; installs Debian's when npm is missing.
set -euo pipefail
LOG_TAG=web
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

WEB=$REPO/web

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ensure_node() {
    if ! command -v npm >/dev/null; then
        apt_install nodejs npm
        hash -r
    fi
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 18)) || die "Node.js $(node --version) is too old for the web build; 18 or later is needed"
}

# npm ci only when the lockfile changed since the last install: it wipes node_modules.
ensure_modules() {
    local stamp=$WEB/node_modules/.deskgate-lock
    if [[ -f $stamp ]] && cmp -s -- "$stamp" "$WEB/package-lock.json"; then
        return 0
    fi
    log "npm ci in web/ (log: $STATE_DIR/web-npm.log)"
    ensure_state_dir
    if ! (cd -- "$WEB" && npm ci --no-audit --no-fund --loglevel=error) >"$STATE_DIR/web-npm.log" 2>&1; then
        show_log_tail "$STATE_DIR/web-npm.log"
        die "npm ci failed in web/ (log: $STATE_DIR/web-npm.log)"
    fi
    cp -- "$WEB/package-lock.json" "$stamp"
}

cmd_build() {
    ensure_node
    ensure_modules
    log "building web/ into web/dist"
    (cd -- "$WEB" && npm run --silent build)
}

cmd_test() {
    ensure_node
    ensure_modules
    # Colour only on a terminal, like the rest of the project's output.
    if [[ -t 1 ]]; then
        (cd -- "$WEB" && npx vitest run)
    else
        (cd -- "$WEB" && NO_COLOR=1 npx vitest run)
    fi
}

case ${1:-} in
build) cmd_build ;;
test) cmd_test ;;
*) usage ;;
esac
