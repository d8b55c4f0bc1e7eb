#!/usr/bin/env bash
# Run the gate locally against the services from `services.sh up` (used by `make run`).
#
#   run-gate.sh [extra args for `deskgate serve`...]
#
# Settings come from .deskgate/services.env, but anything already set in the caller's
# environment wins. Local defaults (also overridable):
#   DESKGATE_GPUS           auto if `nvidia-smi -L` works, else fake:2
#   DESKGATE_SESSION_IMAGE  deskgate/desktop:local (TigerVNC desktop, scripts/desktop.sh)
#   DESKGATE_METRICS_ADDR   127.0.0.1:9108
#   DESKGATE_BIND           127.0.0.1:8080
#   CARGO_RUN_FLAGS         --release
#   DESKGATE_BIN            unset: `cargo run`; else this deskgate binary is run as it is
#
# A working local economy on the local anvil chain (chain id 31337), unless the caller
# set its parts:
#   DESKGATE_REVENUE_ADDRESS   anvil dev account #9 (0xa0Ee7A142d267C1f36714E4a8F75612F20a79720)
#   DESKGATE_CONFIRMATIONS     1: anvil mines a block per transaction, and that block counts one
#   DESKGATE_CHAIN_POLL_MILLIS 1000
#   DESKGATE_WALLET_RPC_URL    the local anvil: the page offers it to a wallet lacking the chain
#   DESKGATE_TOKEN_ADDRESS     tests/fixtures TestToken ("DGT"), deployed when the chain lacks it,
#                              1,000 DGT minted to dev accounts #0-#2
#   DESKGATE_ADMIN_TOKEN       random, kept in .deskgate/admin-token (mode 600), printed at start;
#                              never generated when TLS_CERT is set (the production posture)
set -euo pipefail
LOG_TAG=run
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

ENV_FILE=$STATE_DIR/services.env
[[ -f $ENV_FILE ]] || die "$ENV_FILE missing; run: make services (or scripts/services.sh up)"

# Load services.env without overriding the caller's environment.
while IFS= read -r line || [[ -n $line ]]; do
    line=${line#export }
    if [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
        key=${BASH_REMATCH[1]}
        if [[ -z ${!key+set} ]]; then
            export "$key=${BASH_REMATCH[2]}"
        fi
    fi
done <"$ENV_FILE"

if [[ -z ${DESKGATE_GPUS:-} ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        DESKGATE_GPUS=auto
    else
        DESKGATE_GPUS=fake:2
    fi
fi
export DESKGATE_GPUS
export DESKGATE_SESSION_IMAGE=${DESKGATE_SESSION_IMAGE:-${DESKGATE_DESKTOP_IMAGE:-deskgate/desktop:local}}
export DESKGATE_METRICS_ADDR=${DESKGATE_METRICS_ADDR:-127.0.0.1:9108}
export DESKGATE_BIND=${DESKGATE_BIND:-127.0.0.1:8080}

LOCAL_CHAIN_ID=31337
# anvil's well-known dev accounts (keys are public: a local chain only).
DEV_ACCOUNTS=(
    0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
    0x70997970C51812dc3A010C7d01b50e0d17dc79C8
    0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC
)
TOKEN_DEPLOYER=0x14dC79964da2C08b23698B3D3cc7Ca32193d9955 # dev account #7
LOCAL_REVENUE=0xa0Ee7A142d267C1f36714E4a8F75612F20a79720  # dev account #9
TOKEN_BIN=$REPO/tests/fixtures/artifacts/TestToken.bin
TOKEN_FILE=$STATE_DIR/local-token-address
ADMIN_TOKEN_FILE=$STATE_DIR/admin-token

# rpc METHOD PARAMS_JSON: the node's whole JSON answer; fails on an error answer.
rpc() {
    local answer
    answer=$(curl -sS -m 5 -X POST -H 'Content-Type: application/json' \
        --data "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" \
        "$DESKGATE_RPC_URL") || return 1
    [[ $answer == *'"result":'* ]] || {
        warn "$1 failed: $answer"
        return 1
    }
    printf '%s\n' "$answer"
}

# json_field NAME: the string value of "NAME" in the JSON on stdin.
json_field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }

# send_and_wait FROM TO_OR_EMPTY DATA: sends from an unlocked dev account and waits
# for the receipt; prints it.
send_and_wait() {
    local to="" hash receipt i
    [[ -n $2 ]] && to=",\"to\":\"$2\""
    hash=$(rpc eth_sendTransaction "[{\"from\":\"$1\"$to,\"data\":\"$3\"}]" | json_field result)
    [[ -n $hash ]] || return 1
    for ((i = 0; i < 50; i++)); do
        receipt=$(rpc eth_getTransactionReceipt "[\"$hash\"]") || return 1
        if [[ $receipt == *'"status":"0x1"'* ]]; then
            printf '%s\n' "$receipt"
            return 0
        fi
        [[ $receipt == *'"status":"0x0"'* ]] && return 1
        sleep 0.2
    done
    return 1
}

# word HEX: HEX left-padded with zeros to a 32-byte ABI word.
word() { printf '%064s' "${1#0x}" | tr ' ' 0; }

# The test token's address on the local chain, deployed (and minted to the first dev
# accounts) when the chain does not hold it: anvil forgets everything when it restarts.
local_token() {
    local token code receipt account
    if [[ -f $TOKEN_FILE ]]; then
        token=$(<"$TOKEN_FILE")
        code=$(rpc eth_getCode "[\"$token\",\"latest\"]" | json_field result) || return 1
        if [[ ${#code} -gt 2 ]]; then
            printf '%s\n' "$token"
            return 0
        fi
    fi
    receipt=$(send_and_wait "$TOKEN_DEPLOYER" "" "0x$(tr -d '[:space:]' <"$TOKEN_BIN")") || return 1
    token=$(json_field contractAddress <<<"$receipt")
    [[ -n $token ]] || return 1
    for account in "${DEV_ACCOUNTS[@]}"; do
        # mint(address,uint256): 1,000 DGT (18 decimals).
        send_and_wait "$TOKEN_DEPLOYER" "$token" \
            "0x40c10f19$(word "$account")$(word 3635c9adc5dea00000)" >/dev/null || return 1
    done
    printf '%s\n' "$token" >"$TOKEN_FILE"
    log "deployed the test token DGT at $token; minted 1,000 DGT to ${DEV_ACCOUNTS[*]}"
    printf '%s\n' "$token"
}

local_economy() {
    if [[ ${DESKGATE_CHAIN_ID:-} != "$LOCAL_CHAIN_ID" || -z ${DESKGATE_RPC_URL:-} ]]; then
        log "chain $DESKGATE_CHAIN_ID is not the local anvil: deposits are as configured"
        return 0
    fi
    command -v curl >/dev/null || die "curl not found; run: make services (it installs what anvil needs)"
    export DESKGATE_REVENUE_ADDRESS=${DESKGATE_REVENUE_ADDRESS:-$LOCAL_REVENUE}
    # The page offers it to a wallet that does not know the local chain.
    export DESKGATE_WALLET_RPC_URL=${DESKGATE_WALLET_RPC_URL:-$DESKGATE_RPC_URL}
    export DESKGATE_CONFIRMATIONS=${DESKGATE_CONFIRMATIONS:-1}
    export DESKGATE_CHAIN_POLL_MILLIS=${DESKGATE_CHAIN_POLL_MILLIS:-1000}
    if [[ -z ${DESKGATE_TOKEN_ADDRESS:-} ]]; then
        DESKGATE_TOKEN_ADDRESS=$(local_token) ||
            die "could not deploy the test token on $DESKGATE_RPC_URL (is anvil up? run: make services)"
        export DESKGATE_TOKEN_ADDRESS
    fi
    log "local economy on anvil $DESKGATE_RPC_URL (chain id $LOCAL_CHAIN_ID):"
    log "  pay to       $DESKGATE_REVENUE_ADDRESS (ETH, or DGT at $DESKGATE_TOKEN_ADDRESS)"
    log "  credited at  $DESKGATE_CONFIRMATIONS confirmation(s); anvil mines each transaction at once"
    log "  dev wallets  ${DEV_ACCOUNTS[*]} (anvil's, 10,000 ETH and 1,000 DGT each)"
}

local_admin_token() {
    [[ -z ${DESKGATE_ADMIN_TOKEN:-} ]] || return 0
    if [[ -n ${DESKGATE_TLS_CERT:-} ]]; then
        log "TLS posture: no admin token is generated (set DESKGATE_ADMIN_TOKEN for the admin API)"
        return 0
    fi
    ensure_state_dir
    if [[ ! -s $ADMIN_TOKEN_FILE ]]; then
        (
            umask 077
            od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$ADMIN_TOKEN_FILE"
        )
    fi
    DESKGATE_ADMIN_TOKEN=$(<"$ADMIN_TOKEN_FILE")
    export DESKGATE_ADMIN_TOKEN
    log "admin token for the local operator (kept in ${ADMIN_TOKEN_FILE#"$REPO"/}): $DESKGATE_ADMIN_TOKEN"
    log "  e.g. curl -H \"Authorization: Bearer \$(cat ${ADMIN_TOKEN_FILE#"$REPO"/})\" http://$DESKGATE_BIND/api/v1/admin/gpus"
}

local_economy
local_admin_token

log "gate will listen on http://$DESKGATE_BIND (metrics: http://$DESKGATE_METRICS_ADDR/metrics, GPUs: $DESKGATE_GPUS, session image: $DESKGATE_SESSION_IMAGE)"
if [[ -n ${DESKGATE_BIN:-} ]]; then
    exec "$DESKGATE_BIN" serve "$@"
fi
command -v cargo >/dev/null || die "cargo not found; install Rust with rustup (https://rustup.rs)"
# shellcheck disable=SC2086 # CARGO_RUN_FLAGS is a word list on purpose
exec cargo run ${CARGO_RUN_FLAGS---release} --bin deskgate -- serve "$@"
