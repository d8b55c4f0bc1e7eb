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

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup (https://rustup.rs)"

log "gate will listen on http://$DESKGATE_BIND (metrics: http://$DESKGATE_METRICS_ADDR/metrics, GPUs: $DESKGATE_GPUS, session image: $DESKGATE_SESSION_IMAGE)"
# shellcheck disable=SC2086 # CARGO_RUN_FLAGS is a word list on purpose
exec cargo run ${CARGO_RUN_FLAGS---release} --bin deskgate -- serve "$@"
