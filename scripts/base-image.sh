#!/usr/bin/env bash
# The Debian base image the compose stack's Dockerfiles build FROM when no registry is
# reachable (the test machines): made here from Debian's packages, never pulled.
#
#   base-image.sh up      make deskgate/debian:bookworm if missing or out of date
#   base-image.sh name    print the image name (for `--build-arg BASE=…`)
#
# debootstrap (variant minbase, plus ca-certificates) assembles a rootfs from the
# host's Debian mirror, which `docker import` turns into an image; its apt sources are
# the host's mirror with bookworm-updates and the security suite, so Dockerfiles can
# `apt-get install` in it as in debian:bookworm-slim. A self-hoster's machine uses the
# usual `debian:bookworm-slim` instead (the Dockerfiles' default BASE). The image carries
# a label with a hash of its recipe and is rebuilt when the recipe changes.
set -euo pipefail
LOG_TAG=base-image
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
IMAGE=${DESKGATE_BASE_IMAGE:-deskgate/debian:$SUITE}
SPEC_LABEL=org.deskgate.base.spec
INCLUDE=ca-certificates

# The host's Debian mirror (deb822 or one-line sources), else deb.debian.org.
host_mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list 2>/dev/null |
            awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

spec_hash() {
    { cat -- "${BASH_SOURCE[0]}"; printf '%s %s %s\n' "$SUITE" "$INCLUDE" "$(host_mirror)"; } |
        sha256sum | cut -c1-16
}

build_image() { # SPEC
    local spec=$1 mirror root
    mirror=$(host_mirror)
    apt_install debootstrap
    root=$(mktemp -d "${TMPDIR:-/tmp}/deskgate-rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf -- '$root'" RETURN
    log "debootstrap $SUITE (minbase, $INCLUDE) from $mirror; a few minutes the first time"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$mirror" \
        >>"$STATE_DIR/debootstrap.log" 2>&1; then
        show_log_tail "$STATE_DIR/debootstrap.log"
        die "debootstrap failed (log: $STATE_DIR/debootstrap.log)"
    fi
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${mirror%/debian}/debian-security $SUITE-security main
SOURCES
    # What debian:*-slim leaves out: package lists, caches, docs and man pages.
    rm -rf -- "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
    log "docker import $IMAGE"
    tar --numeric-owner -C "$root" -c . |
        docker import \
            --change "LABEL $SPEC_LABEL=$spec" \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            - "$IMAGE" >/dev/null
}

ensure_image() {
    local spec
    ensure_state_dir
    spec=$(spec_hash)
    if [[ $(image_label "$IMAGE" "$SPEC_LABEL") == "$spec" ]]; then
        log "$IMAGE is up to date"
        return 0
    fi
    replace_image "$IMAGE" "$SPEC_LABEL" "$spec" build_image "$spec"
    log "$IMAGE ready ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case ${1:-up} in
up)
    timeout 15 docker info >/dev/null 2>&1 ||
        die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    ensure_image
    ;;
name) printf '%s\n' "$IMAGE" ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
