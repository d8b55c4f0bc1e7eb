#!/usr/bin/env bash
# The Debian base image the compose stack's Dockerfiles build FROM when no registry is
# reachable (the test machines): made here from Debian's packages, never pulled.
#
#   base-image.sh up          make deskgate/debian:bookworm and the Rust build image
#                             deskgate/rust:<version>-bookworm if missing or out of date
#   base-image.sh name        print the base image name (for `--build-arg BASE=…`)
#   base-image.sh rust-name   print the Rust build image name (`--build-arg RUST_IMAGE=…`)
#
# debootstrap (variant minbase, plus ca-certificates) assembles a rootfs from the
# host's Debian mirror, which `docker import` turns into an image; its apt sources are
# the host's mirror with bookworm-updates and the security suite, so Dockerfiles can
# `apt-get install` in it as in debian:bookworm-slim. A self-hoster's machine uses the
# usual `debian:bookworm-slim` instead (the Dockerfiles' default BASE). The image carries
# a label with a hash of its recipe and is rebuilt when the recipe changes.
#
# The Rust build image stands in for `rust:<version>-slim-bookworm`: the base image plus
# gcc and libc6-dev (apt) and this machine's own Rust toolchain (rustc, cargo and the
# standard library from `rustc --print sysroot`; no toolchain can be downloaded here).
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

HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

spec_hash() {
    { cat -- "${BASH_SOURCE[0]}"; printf '%s %s %s\n' "$SUITE" "$INCLUDE" "$(host_mirror)"; cat -- "$HOST_CA_BUNDLE" 2>/dev/null || true; } |
        sha256sum | cut -c1-16
}

# The image trusts what this machine trusts: certificates in the host's bundle that
# Debian's does not have (a site's own CA, an intercepting proxy's) are added as local
# authorities, so that npm and cargo in a build reach their registries as they do here.
trust_host_authorities() { # ROOT
    local root=$1 dir=$1/usr/local/share/ca-certificates extra
    [[ -s $HOST_CA_BUNDLE ]] || return 0
    mkdir -p -- "$dir"
    extra=$(python3 - "$HOST_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt" "$dir" <<'PY'
import re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host = pem.findall(open(sys.argv[1]).read())
known = {"".join(c.split()) for c in pem.findall(open(sys.argv[2]).read())}
n = 0
for cert in host:
    if "".join(cert.split()) not in known:
        n += 1
        with open(f"{sys.argv[3]}/deskgate-host-{n}.crt", "w") as out:
            out.write(cert + "\n")
print(n)
PY
    )
    if ((extra > 0)); then
        log "adding $extra certificate authorit$( ((extra == 1)) && echo y || echo ies) this host trusts beyond Debian's"
        chroot "$root" update-ca-certificates >>"$STATE_DIR/debootstrap.log" 2>&1 ||
            die "update-ca-certificates failed in the base image (log: $STATE_DIR/debootstrap.log)"
    fi
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
    trust_host_authorities "$root"
    # What debian:*-slim leaves out: package lists, caches, docs and man pages.
    rm -rf -- "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
    log "docker import $IMAGE"
    tar --numeric-owner -C "$root" -c . |
        docker import \
            --change "LABEL $SPEC_LABEL=$spec" \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
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

# The Rust build image: the same name scheme as the official one, by rustc's version.
rust_version() { rustc --version | awk '{print $2}'; }
rust_image() { printf '%s\n' "${DESKGATE_RUST_IMAGE:-deskgate/rust:$(rust_version)-bookworm}"; }
RUST_LABEL=org.deskgate.rust.spec

rust_spec_hash() {
    { cat -- "${BASH_SOURCE[0]}"; rustc -vV; docker image inspect --format '{{.Id}}' "$IMAGE"; } |
        sha256sum | cut -c1-16
}

build_rust_image() { # SPEC
    local spec=$1 sysroot cid
    sysroot=$(rustc --print sysroot)
    [[ -x $sysroot/bin/cargo ]] || die "no cargo beside rustc in $sysroot"
    cid=$(docker create "$IMAGE" sleep infinity)
    # shellcheck disable=SC2064
    trap "docker rm -f '$cid' >/dev/null 2>&1 || true" RETURN
    docker start "$cid" >/dev/null
    log "installing gcc and libc6-dev in the Rust build image (log: $STATE_DIR/rust-image.log)"
    if ! docker exec "$cid" sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*' \
        >>"$STATE_DIR/rust-image.log" 2>&1; then
        show_log_tail "$STATE_DIR/rust-image.log"
        die "apt-get failed in the Rust build image (log: $STATE_DIR/rust-image.log)"
    fi
    log "copying the Rust toolchain $(rust_version) from $sysroot"
    docker exec "$cid" mkdir -p /usr/local/rust /usr/local/cargo
    # rustc, cargo and lib/ (the compiler's libraries and rust-std); no docs.
    tar -C "$sysroot" --numeric-owner --owner=0 --group=0 -cf - bin/rustc bin/cargo lib |
        docker cp - "$cid:/usr/local/rust"
    docker stop -t 1 "$cid" >/dev/null
    docker commit \
        --change "LABEL $RUST_LABEL=$spec" \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'CMD ["/bin/bash"]' \
        "$cid" "$(rust_image)" >/dev/null
}

ensure_rust_image() {
    local spec image
    command -v rustc >/dev/null || die "rustc not found; install Rust with rustup (https://rustup.rs)"
    image=$(rust_image)
    spec=$(rust_spec_hash)
    if [[ $(image_label "$image" "$RUST_LABEL") == "$spec" ]]; then
        log "$image is up to date"
        return 0
    fi
    replace_image "$image" "$RUST_LABEL" "$spec" build_rust_image "$spec"
    log "$image ready ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case ${1:-up} in
up)
    timeout 15 docker info >/dev/null 2>&1 ||
        die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    ensure_image
    ensure_rust_image
    ;;
name) printf '%s\n' "$IMAGE" ;;
rust-name) rust_image ;;
*)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
