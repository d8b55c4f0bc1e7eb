#!/usr/bin/env bash
# The fault campaign (tests/chaos/), beyond the short one `make test` runs.
#
#   chaos.sh [FAULTS]   replay every kept seed (tests/chaos/kept-seeds), then one
#                       campaign of FAULTS faults (default 1000) with a new seed, or
#                       with DESKGATE_CHAOS_SEED when it is set
#   chaos.sh kept       replay the kept seeds only
#
# Needs the services (`make services`) and root (network namespaces, one dockerd per
# GPU host). Each campaign prints its figures and the command that replays it.
set -euo pipefail
LOG_TAG=chaos
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

KEPT=$REPO/tests/chaos/kept-seeds

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

campaign() { # SEED FAULTS
    log "campaign: seed ${1:-new}, $2 faults"
    DESKGATE_CHAOS_SEED=$1 DESKGATE_CHAOS_FAULTS=$2 \
        cargo test --locked --test chaos -- --nocapture
}

replay_kept() {
    local seed faults _
    while read -r seed faults _; do
        [[ -z $seed || $seed == \#* ]] && continue
        campaign "$seed" "$faults"
    done <"$KEPT"
}

case ${1:-} in
kept)
    replay_kept
    ;;
'' | [0-9]*)
    replay_kept
    campaign "${DESKGATE_CHAOS_SEED:-}" "${1:-1000}"
    ;;
*)
    usage
    ;;
esac
