#!/usr/bin/env bash
# anvil (local Ethereum node) and solc-js for development, tests and CI.
#
#   anvil.sh up        install anvil + solcjs under .tools/ (npm) if needed and start
#                      anvil on 127.0.0.1:58545, chain id 31337, auto-mining
#   anvil.sh down      stop it
#   anvil.sh paths     print the anvil binary and solcjs paths
#   anvil.sh packages  print the Debian packages that are missing
set -euo pipefail
LOG_TAG=anvil
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

ANVIL_VERSION=1.7.1
SOLC_VERSION=0.8.37
HOST=127.0.0.1
PORT=58545
CHAIN_ID=31337
RPC_URL=http://$HOST:$PORT
TOOLS_DIR=$REPO/.tools
ANVIL_PID=$STATE_DIR/anvil.pid
ANVIL_LOG=$STATE_DIR/anvil.log

case $(uname -m) in
x86_64 | amd64) ANVIL_PKG=@foundry-rs/anvil-linux-amd64 ;;
aarch64 | arm64) ANVIL_PKG=@foundry-rs/anvil-linux-arm64 ;;
*) die "unsupported architecture $(uname -m) for the anvil npm package" ;;
esac
ANVIL_BIN=$TOOLS_DIR/node_modules/$ANVIL_PKG/bin/anvil
SOLCJS=$TOOLS_DIR/node_modules/.bin/solcjs

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

missing_packages() {
    command -v curl >/dev/null || echo curl
    if ! command -v npm >/dev/null; then
        echo nodejs
        echo npm
    fi
}

# Version field of an installed npm package (empty when absent).
installed_version() { # PACKAGE_DIR
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$1/package.json" 2>/dev/null | head -n1
}

tools_current() {
    [[ -x $ANVIL_BIN && -x $SOLCJS ]] &&
        [[ $(installed_version "$TOOLS_DIR/node_modules/$ANVIL_PKG") == "$ANVIL_VERSION" ]] &&
        [[ $(installed_version "$TOOLS_DIR/node_modules/solc") == "$SOLC_VERSION" ]]
}

ensure_tools() {
    tools_current && return 0
    if ! command -v npm >/dev/null; then
        apt_install nodejs npm
        hash -r
    fi
    ensure_state_dir
    mkdir -p -- "$TOOLS_DIR"
    log "npm install $ANVIL_PKG@$ANVIL_VERSION solc@$SOLC_VERSION into $TOOLS_DIR"
    if ! npm install --prefix "$TOOLS_DIR" --no-audit --no-fund --save-exact --loglevel=error \
        "$ANVIL_PKG@$ANVIL_VERSION" "solc@$SOLC_VERSION" >>"$STATE_DIR/npm.log" 2>&1; then
        show_log_tail "$STATE_DIR/npm.log"
        die "npm install failed (log: $STATE_DIR/npm.log)"
    fi
    tools_current || die "after npm install, $ANVIL_BIN or $SOLCJS is missing or has the wrong version"
}

rpc_chain_id() {
    curl -sS -m 2 -X POST -H 'Content-Type: application/json' \
        --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$RPC_URL" 2>/dev/null
}

rpc_ok() {
    [[ $(rpc_chain_id) == *'"result":"'"$(printf '0x%x' "$CHAIN_ID")"'"'* ]]
}

cmd_up() {
    if ! command -v curl >/dev/null; then
        apt_install curl
    fi
    ensure_tools
    ensure_state_dir
    local pid
    if pid=$(pid_running "$ANVIL_PID" anvil); then
        if rpc_ok; then
            log "already running: $RPC_URL (pid $pid)"
            return 0
        fi
        if wait_for --pid "$pid" 10 "anvil (pid $pid)" rpc_ok; then
            log "running: $RPC_URL (pid $pid)"
            return 0
        fi
        warn "anvil (pid $pid) does not answer on $RPC_URL; restarting it"
        stop_pidfile "$ANVIL_PID" anvil anvil
    elif rpc_ok; then
        warn "an anvil not started by this script already answers on $RPC_URL with chain id $CHAIN_ID; using it"
        return 0
    elif [[ -n $(rpc_chain_id) ]]; then
        die "something else answers JSON-RPC on $RPC_URL: $(rpc_chain_id)"
    fi

    log "starting anvil $ANVIL_VERSION on $RPC_URL (chain id $CHAIN_ID, log: $ANVIL_LOG)"
    pid=$(start_daemon "$ANVIL_PID" "$ANVIL_LOG" "$ANVIL_BIN" \
        --host "$HOST" --port "$PORT" --chain-id "$CHAIN_ID" --quiet --color never)
    if ! wait_for --pid "$pid" 30 "anvil" rpc_ok; then
        show_log_tail "$ANVIL_LOG"
        stop_pidfile "$ANVIL_PID" anvil anvil
        die "anvil did not answer eth_chainId on $RPC_URL within 30 s (port $PORT taken?)"
    fi
    log "running: $RPC_URL (pid $pid)"
}

cmd_down() {
    if pid_running "$ANVIL_PID" anvil >/dev/null; then
        stop_pidfile "$ANVIL_PID" anvil anvil
    else
        rm -f -- "$ANVIL_PID"
        log "not running"
    fi
}

case ${1:-up} in
up) cmd_up ;;
down) cmd_down ;;
paths)
    printf 'ANVIL_BIN=%s\nSOLCJS=%s\n' "$ANVIL_BIN" "$SOLCJS"
    ;;
packages) missing_packages ;;
*) usage ;;
esac
