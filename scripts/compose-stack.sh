#!/usr/bin/env bash
# The compose stack's images, built here the way a self-hoster builds them, for the
# acceptance test (tests/compose_stack.rs) and for trying the stack on this machine.
#
#   compose-stack.sh build     install docker-compose if missing, make the local base
#                              images (scripts/base-image.sh) and build every image of
#                              compose/compose.yaml (profile dev included) on them
#   compose-stack.sh images    print the images the stack runs, one per line
#   compose-stack.sh packages  print the Debian packages that are missing
#
# No registry is reachable on the test machines, so the Dockerfiles build FROM
# deskgate/debian:bookworm and deskgate/rust:<version>-bookworm, made from Debian's
# packages and this machine's Rust toolchain; a self-hoster's machine pulls
# debian:bookworm-slim and rust:1.95-slim-bookworm instead (the Dockerfiles' defaults).
# Docker's layer cache makes a second build of unchanged sources take seconds.
set -euo pipefail
LOG_TAG=compose
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

COMPOSE_DIR=$REPO/compose
# The tag compose.yaml gives every image it builds.
IMAGES=(
    deskgate/deskgate:local
    deskgate/desktop-xfce:local
    deskgate/postgres:15-local
    deskgate/turn:local
    deskgate/anvil:local
)

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

missing_packages() {
    command -v docker-compose >/dev/null || echo docker-compose
}

cmd_build() {
    local start=${EPOCHREALTIME/./} pkgs
    pkgs=$(missing_packages)
    if [[ -n $pkgs ]]; then
        # shellcheck disable=SC2086 # word list on purpose
        apt_install $pkgs
    fi
    timeout 15 docker info >/dev/null 2>&1 ||
        die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    "$REPO/scripts/base-image.sh" up
    local base rust
    base=$("$REPO/scripts/base-image.sh" name)
    rust=$("$REPO/scripts/base-image.sh" rust-name)
    log "building the stack's images on $base and $rust (a cold build of the deskgate image takes ~11 min on 2 cores)"
    # compose.yaml needs its secrets to parse; the build uses none of them.
    local env_file
    env_file=$(mktemp)
    trap 'rm -f -- "$env_file"' RETURN
    "$COMPOSE_DIR/init-env.sh" --dev --force --file "$env_file" >/dev/null
    DESKGATE_BUILD_BASE=$base DESKGATE_BUILD_RUST_IMAGE=$rust \
        docker-compose --project-directory "$COMPOSE_DIR" -f "$COMPOSE_DIR/compose.yaml" \
        --env-file "$env_file" --profile dev build
    local image
    for image in "${IMAGES[@]}"; do
        docker image inspect "$image" >/dev/null 2>&1 || die "the build made no $image"
        log "$image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
    done
    local end=${EPOCHREALTIME/./}
    log "built in $(((end - start) / 1000000)) s"
}

case ${1:-} in
build) cmd_build ;;
images) printf '%s\n' "${IMAGES[@]}" ;;
packages) missing_packages ;;
*) usage ;;
esac
