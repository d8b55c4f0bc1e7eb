#!/usr/bin/env bash
# A Docker Swarm of real Docker Engines on this one machine, for tests/fleet_swarm.rs
# (and for trying compose/stack.yaml by hand): each "node" is a network namespace with
# its own dockerd (own --data-root, --exec-root, --pidfile, socket, cgroup parent and,
# through a UTS namespace, its own hostname), all on one Linux bridge made here.
#
#   fleet-rig.sh engine N NAME   start node N (0 = the manager) called NAME, at 10.215.0.(10+N)
#   fleet-rig.sh load N IMAGE... copy images from this machine's engine into node N's
#   fleet-rig.sh anvil           a dev chain (anvil) in the manager's namespace, :8545
#   fleet-rig.sh down            stop everything the rig made (also what a killed run left)
#   fleet-rig.sh env N           print DOCKER_HOST=... for node N
#
# State lives in $DESKGATE_FLEET_DIR (default /tmp/deskgate-fleet): node N's engine in
# node-N/, its socket at node-N/docker.sock and, for the stack's per-node bind mount,
# sockets/<hostname>/docker.sock (a hard link would not follow a restart: a symlink).
#
# Invariants: everything made here is named dgfleet* (bridge dgfleet0, namespaces
# dgfleet-N, host veth ends dgfleetvN, iptables rule on dgfleet0 only), lives in
# 10.215.0.0/24, and `down` removes all of it; the machine's own dockerd, its networks
# and /var/lib/docker are never touched. Traffic stays on the bridge and loopback: the
# namespaces have no default route, so nothing they send leaves the machine. The one
# exception to "nothing in the host namespace": the bridge holds 10.215.0.1 so that the
# test reaches the nodes' published ports. Encrypted overlays need the kernel's ESP
# (rfc4106(gcm(aes)) in XFRM); machines without it (seen: 6.18.44) drop their traffic, so
# the test deploys a copy of the stack without `encrypted` (it says so when it does).
# Needs root, iproute2, iptables, util-linux (nsenter, unshare, flock) and docker.io's
# dockerd (`make services` installs it).
set -euo pipefail

DIR=${DESKGATE_FLEET_DIR:-/tmp/deskgate-fleet}
BRIDGE=dgfleet0
PREFIX=10.215.0
ANVIL_PORT=8545

die() {
    printf '[fleet-rig] error: %s\n' "$*" >&2
    exit 1
}
log() { printf '[fleet-rig] %s\n' "$*" >&2; }

need_root() {
    [[ $(id -u) == 0 ]] || die "run as root (namespaces, bridges, dockerd)"
    local tool
    for tool in ip iptables nsenter unshare dockerd docker; do
        command -v "$tool" >/dev/null || die "$tool is missing (run make services; apt-get install iproute2 iptables util-linux)"
    done
}

sock() { echo "$DIR/node-$1/docker.sock"; }

bridge_up() {
    mkdir -p "$DIR/sockets"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$PREFIX.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    # The machine's dockerd sets FORWARD's policy to DROP and bridged frames go through
    # iptables (bridge-nf-call-iptables): without this rule the nodes cannot talk.
    iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
        iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
}

cmd_engine() {
    local n=${1:?node number} name=${2:?node name}
    need_root
    bridge_up
    local ns=dgfleet-$n node=$DIR/node-$n
    mkdir -p "$node" "$DIR/sockets/$name"
    if ! ip netns list | grep -qw "$ns"; then
        ip netns add "$ns"
        ip link add "dgfleetv$n" type veth peer name eth0 netns "$ns"
        ip link set "dgfleetv$n" master "$BRIDGE" up
        ip -n "$ns" addr add "$PREFIX.$((10 + n))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    fi
    if [[ -f $node/dockerd.pid ]] && kill -0 "$(cat "$node/dockerd.pid")" 2>/dev/null; then
        log "node $n's engine runs already"
    else
        # nsenter --net keeps the machine's cgroup mounts (ip netns exec would remount
        # /sys); unshare --uts gives the engine its own hostname, which Swarm shows.
        nsenter --net="/var/run/netns/$ns" unshare --uts sh -c \
            'hostname "$0" && exec "$@"' "$name" \
            dockerd --data-root="$node/data" --exec-root="$node/exec" \
            --pidfile="$node/dockerd.pid" --host="unix://$node/docker.sock" \
            --bridge=none --log-level=warn --cgroup-parent="dgfleet-$n" \
            </dev/null >"$node/dockerd.log" 2>&1 &
    fi
    local t
    for t in $(seq 1 120); do
        DOCKER_HOST=unix://$(sock "$n") docker version >/dev/null 2>&1 && break
        sleep 0.5
    done
    DOCKER_HOST=unix://$(sock "$n") docker version >/dev/null 2>&1 ||
        die "node $n's dockerd did not answer in 60 s: $(tail -5 "$node/dockerd.log")"
    ln -sfn "$(sock "$n")" "$DIR/sockets/$name/docker.sock"
    log "node $n ($name) at $PREFIX.$((10 + n)): engine $(DOCKER_HOST=unix://$(sock "$n") docker version --format '{{.Server.Version}}')"
}

cmd_load() {
    local n=${1:?node number}
    shift
    local image missing=()
    for image in "$@"; do
        docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
    done
    ((${#missing[@]} == 0)) ||
        die "missing on this machine's engine: ${missing[*]} (run scripts/compose-stack.sh build; scripts/desktop.sh for deskgate/desktop:local)"
    docker save "$@" | DOCKER_HOST=unix://$(sock "$n") docker load --quiet >/dev/null
}

cmd_anvil() {
    need_root
    local bin=${DESKGATE_ANVIL_BIN:-}
    [[ -x $bin ]] || die "DESKGATE_ANVIL_BIN is not set to anvil (run make services)"
    ip netns exec dgfleet-0 "$bin" --host "$PREFIX.10" --port "$ANVIL_PORT" --chain-id 31337 \
        --block-time 1 </dev/null >"$DIR/anvil.log" 2>&1 &
    echo $! >"$DIR/anvil.pid"
    local t
    for t in $(seq 1 60); do
        ip netns exec dgfleet-0 bash -c "exec 3<>/dev/tcp/$PREFIX.10/$ANVIL_PORT" 2>/dev/null && return 0
        sleep 0.5
    done
    die "anvil did not listen: $(tail -5 "$DIR/anvil.log")"
}

# Stops one engine: its swarm tasks go with it (SIGTERM stops its containers).
stop_engine() {
    local node=$1 pid
    [[ -f $node/dockerd.pid ]] || return 0
    pid=$(cat "$node/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local t
        for t in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # dockerd's own containerd (found by its exec root on its command line) and the
    # shims of its containers.
    local p
    for p in $(pgrep -f -- "$node/exec" || true); do
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -f "$node/dockerd.pid"
}

cmd_down() {
    need_root
    if [[ -f $DIR/anvil.pid ]]; then
        kill "$(cat "$DIR/anvil.pid")" 2>/dev/null || true
        rm -f "$DIR/anvil.pid"
    fi
    local node
    for node in "$DIR"/node-*; do
        [[ -d $node ]] || continue
        DOCKER_HOST=unix://$node/docker.sock timeout 20 docker swarm leave --force >/dev/null 2>&1 || true
        stop_engine "$node"
    done
    local ns
    for ns in $(ip netns list | awk '$1 ~ /^dgfleet-/ {print $1}'); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    local link
    for link in $(ip -o link show | awk -F': ' '$2 ~ /^dgfleetv/ {sub(/@.*/, "", $2); print $2}'); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
    if [[ -d $DIR ]]; then
        grep -o " $DIR/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$DIR"
    fi
}

case ${1:-} in
engine) shift; cmd_engine "$@" ;;
load) shift; cmd_load "$@" ;;
anvil) cmd_anvil ;;
down) cmd_down ;;
env) echo "DOCKER_HOST=unix://$(sock "${2:?node number}")" ;;
*) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
