#!/usr/bin/env bash
# Docker Engine for development, tests and CI, plus the local test image.
#
#   docker.sh up        use the running Docker daemon, or install docker.io and start
#                       dockerd; then build deskgate/test-base:local if needed
#   docker.sh down      stop dockerd, only if this script started it
#   docker.sh image     (re)build the test image if missing or out of date
#   docker.sh packages  print the Debian packages that are missing
#
# The test image is imported (no registry is reachable) from a tiny rootfs: Debian's
# busybox-static with the usual applets, users root and desk (1000:1000), /tmp and
# /home/desk. USER is left unset: the launcher chooses the user. The image carries a
# label with a hash of its recipe and is rebuilt when the recipe changes.
set -euo pipefail
LOG_TAG=docker
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=${DESKGATE_TEST_IMAGE:-deskgate/test-base:local}
DOCKERD_PID=$STATE_DIR/dockerd.pid
DOCKERD_LOG=$STATE_DIR/dockerd.log
SPEC_LABEL=org.deskgate.test-base.spec
BUSYBOX=/bin/busybox

# Applets linked into /bin of the test image.
APPLETS=(
    sh echo sleep cat ls id nc wget true false env ps kill head tail grep
    test '[' printf pwd mkdir rm cp mv touch chmod stat wc sed seq uname hostname
    whoami date timeout
)

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

docker_answers() { timeout 15 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

missing_packages() {
    if ! command -v docker >/dev/null || { ! command -v dockerd >/dev/null && ! docker_answers; }; then
        echo docker.io
    fi
    pkg_installed busybox-static || echo busybox-static
}

# Starts dockerd with extra arguments; returns non-zero when it does not answer in 60 s.
start_dockerd() {
    local pid
    log "starting dockerd${DESKGATE_DOCKERD_ARGS:+ $DESKGATE_DOCKERD_ARGS}${*:+ $*} (log: $DOCKERD_LOG)"
    # shellcheck disable=SC2086 # DESKGATE_DOCKERD_ARGS is a word list on purpose
    pid=$(start_daemon "$DOCKERD_PID" "$DOCKERD_LOG" dockerd ${DESKGATE_DOCKERD_ARGS:-} "$@")
    wait_for --pid "$pid" 60 "dockerd" docker_answers
}

ensure_daemon() {
    if docker_answers; then
        return 0
    fi
    is_root || die "the Docker daemon does not answer and only root can start dockerd; start Docker or add your user to the docker group"
    if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
        apt_install docker.io
        hash -r
    fi
    command -v dockerd >/dev/null || die "dockerd not found even after installing docker.io"
    ensure_state_dir

    local pid
    if pid=$(pid_running "$DOCKERD_PID" dockerd); then
        log "dockerd (pid $pid) started earlier does not answer yet; waiting"
        wait_for --pid "$pid" 60 "dockerd" docker_answers && return 0
        show_log_tail "$DOCKERD_LOG"
        die "dockerd (pid $pid) does not answer; see $DOCKERD_LOG"
    fi
    if [[ ${DOCKER_HOST:-unix:///var/run/docker.sock} == unix:///var/run/docker.sock ]] &&
        pid=$(pgrep -x dockerd | head -n1) && [[ -n $pid ]]; then
        log "a dockerd not started by this script is running (pid $pid) but does not answer; waiting"
        wait_for --pid "$pid" 60 "dockerd" docker_answers && return 0
        die "dockerd (pid $pid, not ours) does not answer on ${DOCKER_HOST:-unix:///var/run/docker.sock}"
    fi

    if start_dockerd; then
        return 0
    fi
    # Sandboxes without iptables/NAT support: retry once with Docker's iptables off.
    if grep -qiE 'iptables|nat chain' "$DOCKERD_LOG" && ! pid_running "$DOCKERD_PID" dockerd >/dev/null; then
        warn "dockerd failed to set up iptables; retrying with --iptables=false"
        if start_dockerd --iptables=false; then
            return 0
        fi
    fi
    show_log_tail "$DOCKERD_LOG"
    stop_pidfile "$DOCKERD_PID" dockerd dockerd
    die "dockerd did not come up within 60 s; see $DOCKERD_LOG"
}

image_spec_hash() {
    {
        sha256sum "$BUSYBOX" | cut -d' ' -f1
        printf '%s\n' "${APPLETS[@]}"
        printf '%s' "$IMAGE_PASSWD" "$IMAGE_GROUP"
        echo "layout-v1"
    } | sha256sum | cut -c1-16
}

build_image() { # SPEC_HASH
    local spec=$1 root
    root=$(mktemp -d /tmp/deskgate-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
    trap "rm -rf -- '$root'" EXIT
    mkdir -p "$root"/{bin,usr/bin,etc,tmp,root,home/desk}
    cp -- "$BUSYBOX" "$root/bin/busybox"
    chmod 755 "$root/bin/busybox"
    local applet
    for applet in "${APPLETS[@]}"; do
        ln -s busybox "$root/bin/$applet"
    done
    ln -s ../../bin/busybox "$root/usr/bin/env"
    log "importing $IMAGE (spec $spec)"
    import_rootfs "$root" "$IMAGE" \
        --change 'CMD ["/bin/sh"]' \
        --change "LABEL $SPEC_LABEL=$spec" \
        --message "deskgate test base (busybox-static)"
    rm -rf -- "$root"
    trap - EXIT
}

ensure_image() {
    if [[ ! -x $BUSYBOX ]] || ! pkg_installed busybox-static; then
        apt_install busybox-static
    fi
    [[ -x $BUSYBOX ]] || die "$BUSYBOX missing even after installing busybox-static"
    local spec
    spec=$(image_spec_hash)
    if [[ $(image_label "$IMAGE" "$SPEC_LABEL") == "$spec" ]]; then
        return 0
    fi
    replace_image "$IMAGE" "$SPEC_LABEL" "$spec" build_image "$spec"
    local out
    out=$(docker run --rm --user 1000 "$IMAGE" id 2>&1) || die "test image does not run: $out"
    [[ $out == *"uid=1000(desk) gid=1000(desk)"* ]] || die "unexpected 'id' output from $IMAGE as user 1000: $out"
    log "built $IMAGE; as user 1000: $out"
}

cmd_up() {
    ensure_daemon
    ensure_image
    log "running: ${DOCKER_HOST:-unix:///var/run/docker.sock} (server $(docker info --format '{{.ServerVersion}}'), image $IMAGE)"
}

cmd_down() {
    if pid_running "$DOCKERD_PID" dockerd >/dev/null; then
        stop_pidfile "$DOCKERD_PID" dockerd dockerd 40
    else
        rm -f -- "$DOCKERD_PID"
        log "no dockerd started by this script is running; leaving Docker alone"
    fi
}

case ${1:-up} in
up) cmd_up ;;
down) cmd_down ;;
image)
    docker_answers || die "the Docker daemon does not answer; run: $0 up"
    ensure_image
    ;;
packages) missing_packages ;;
*) usage ;;
esac
