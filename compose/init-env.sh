#!/usr/bin/env bash
# Writes compose/.env for the docker compose stack: every secret of .env.example
# ("change-me-…") replaced by 32 random bytes in hex, as `openssl rand -hex 32` makes.
#
#   compose/init-env.sh [--public-url URL] [--dev] [--file PATH] [--force]
#
# --public-url  the address browsers open (DESKGATE_PUBLIC_URL); default: keep the example's
# --dev         point the gate at the stack's own anvil (`docker compose --profile dev`):
#               chain 31337, 1 confirmation, deposits to anvil's first funded account
# --file        where to write (default: compose/.env next to this script)
# --force       replace an existing file (its secrets are lost: a running stack's database
#               password and tokens then no longer match)
#
# It also records the group that owns this host's Docker socket (DESKGATE_DOCKER_GID),
# which the launcher joins, and the stack's TURN server at the public URL's host
# (DESKGATE_TURN_URLS, port 3478, UDP and TCP). The file is created with mode 600. Nothing secret is printed.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
TEMPLATE=$HERE/.env.example
TARGET=$HERE/.env
PUBLIC_URL=
FORCE=0
DEV=0
DOCKER_SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}

die() {
    printf '[init-env] error: %s\n' "$*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --public-url) PUBLIC_URL=${2:?--public-url needs a URL}; shift 2 ;;
        --file) TARGET=${2:?--file needs a path}; shift 2 ;;
        --force) FORCE=1; shift ;;
        --dev) DEV=1; shift ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -r $TEMPLATE ]] || die "cannot read $TEMPLATE"
if [[ -e $TARGET && $FORCE -eq 0 ]]; then
    die "$TARGET exists; keep it, or pass --force to replace its secrets"
fi
if [[ -n $PUBLIC_URL && ! $PUBLIC_URL =~ ^https?://[^/[:space:]]+/?$ ]]; then
    die "--public-url must be http(s)://host[:port], got $PUBLIC_URL"
fi

# 32 bytes from the kernel's CSPRNG, in hex (no openssl needed).
random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# A dev stack is opened on this machine unless told otherwise.
if ((DEV)) && [[ -z $PUBLIC_URL ]]; then
    PUBLIC_URL=http://127.0.0.1:8080
fi
# The stack's own anvil (`--profile dev`): its first funded account receives deposits.
declare -A DEV_VALUES=(
    [DESKGATE_RPC_URL]=http://anvil:8545
    [DESKGATE_CHAIN_ID]=31337
    [DESKGATE_CONFIRMATIONS]=1
    [DESKGATE_WALLET_RPC_URL]=http://127.0.0.1:8545
    [DESKGATE_REVENUE_ADDRESS]=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
)

umask 077
tmp=$(mktemp "$TARGET.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^([A-Z0-9_]+)=change-me ]]; then
        printf '%s=%s\n' "${BASH_REMATCH[1]}" "$(random_hex)"
    elif ((DEV)) && [[ $line =~ ^([A-Z0-9_]+)= && -n ${DEV_VALUES[${BASH_REMATCH[1]}]:-} ]]; then
        printf '%s=%s\n' "${BASH_REMATCH[1]}" "${DEV_VALUES[${BASH_REMATCH[1]}]}"
        unset "DEV_VALUES[${BASH_REMATCH[1]}]"
    elif [[ -n $PUBLIC_URL && $line =~ ^DESKGATE_PUBLIC_URL= ]]; then
        printf 'DESKGATE_PUBLIC_URL=%s\n' "${PUBLIC_URL%/}"
    else
        printf '%s\n' "$line"
    fi
done < "$TEMPLATE" > "$tmp"
# The host's socket group, and the dev settings the template has no line for.
{
    printf '\n# Written by init-env.sh for this host.\n'
    if [[ -S $DOCKER_SOCKET ]]; then
        printf 'DESKGATE_DOCKER_GID=%s\n' "$(stat -c %g -- "$DOCKER_SOCKET")"
    else
        printf '[init-env] warning: no Docker socket at %s; set DESKGATE_DOCKER_GID yourself\n' "$DOCKER_SOCKET" >&2
    fi
    # Browsers reach the stack's TURN server where they reach the gate.
    if ! grep -q '^DESKGATE_TURN_URLS=' "$tmp"; then
        public=$(sed -n 's/^DESKGATE_PUBLIC_URL=//p' "$tmp" | tail -n 1)
        host=${public#*://}
        host=${host%%/*}
        case $host in
            \[*) host="${host%%]*}]" ;;
            *) host=${host%%:*} ;;
        esac
        printf 'DESKGATE_TURN_URLS=turn:%s:3478?transport=udp,turn:%s:3478?transport=tcp\n' "$host" "$host"
    fi
    if ((DEV)); then
        for key in "${!DEV_VALUES[@]}"; do
            printf '%s=%s\n' "$key" "${DEV_VALUES[$key]}"
        done
    fi
} >> "$tmp"
chmod 600 -- "$tmp"
mv -f -- "$tmp" "$TARGET"
trap - EXIT
printf '[init-env] wrote %s (mode 600) with fresh secrets\n' "$TARGET" >&2
