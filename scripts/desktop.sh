#!/usr/bin/env bash
# Desktop session image and the host tools the media tests need.
#
#   desktop.sh up        build the desktop image if needed and install playwright-core
#                        (needs Docker: run docker.sh up first)
#   desktop.sh image     (re)build deskgate/desktop:local if missing or out of date
#   desktop.sh check     run the image under deskgate's hardening and probe it
#   desktop.sh browser   install playwright-core (pinned in scripts/browser/) if needed
#   desktop.sh paths     print KEY=VALUE lines: the image, noVNC, websockify, chromium, ...
#   desktop.sh packages  print the Debian packages that are missing
#
# The image is imported (no registry is reachable) from a rootfs assembled from host
# files: busybox-static applets, TigerVNC's Xvnc, vncpasswd, xkbcomp + the XKB data,
# xsetroot, xdotool, xclip and xev, each with the shared libraries ldd lists (dynamic loader
# included). Its entry point, /usr/local/bin/deskgate-desktop, runs Xvnc on display
# :0 with VNC authentication on 127.0.0.1:5900 only; the gate reaches it through
# `docker exec -i CONTAINER nc 127.0.0.1 5900`. It works with a read-only root, tmpfs
# /tmp and /home, user 1000, no capabilities and no network. The image carries a label
# with a hash of its recipe and is rebuilt when the recipe changes.
set -euo pipefail
LOG_TAG=desktop
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=${DESKGATE_DESKTOP_IMAGE:-deskgate/desktop:local}
SPEC_LABEL=org.deskgate.desktop.spec
BUSYBOX=/bin/busybox

# Debian packages: the image's sources (TigerVNC, X tools, busybox) and the host side
# of the media tests (noVNC + websockify to bridge a browser, chromium to drive it,
# x11-utils for the xmessage window the RFB client test moves around).
# iproute2: the WebRTC test puts Chromium in a network namespace (ip netns).
# xclip: the clipboard tests read and set the desktop's X clipboard with it; xev
# (x11-utils) logs the keys and buttons a test sends.
PACKAGES=(
    tigervnc-standalone-server tigervnc-tools x11-xserver-utils xdotool xclip
    novnc websockify chromium busybox-static x11-utils iproute2
)
NOVNC_DIR=/usr/share/novnc
CHROMIUM=/usr/bin/chromium
XVNC=/usr/bin/Xvnc
VNCPASSWD=/usr/bin/vncpasswd

# Host programs copied into the image (with their libraries). Xvnc and vncpasswd are
# Debian alternatives (symlinks); the image gets the real file plus the plain name.
PROGRAMS=(/usr/bin/Xvnc /usr/bin/vncpasswd /usr/bin/xkbcomp /usr/bin/xsetroot /usr/bin/xdotool /usr/bin/xclip /usr/bin/xev)
# Runtime data: the keymaps Xvnc compiles with xkbcomp at start-up, and Xlib's error
# database (readable X errors from xdotool/xsetroot). Fonts are Xvnc's built-ins.
DATA_DIRS=(/usr/share/X11/xkb)
DATA_FILES=(/usr/share/X11/XErrorDB)

# Busybox applets linked into /usr/bin: the entry point's shell, nc for the gate's VNC
# bridge, and the usual tools for debugging with `docker exec`.
APPLETS=(
    sh echo sleep cat ls id nc env ps kill head tail grep test '[' printf pwd mkdir
    rm cp mv touch chmod stat wc sed uname timeout netstat od tr cut readlink
)

# The image's entry point (installed as /usr/local/bin/deskgate-desktop).
ENTRYPOINT=$REPO/scripts/desktop/deskgate-desktop

# Hardening deskgate applies to session containers (the image must work under it).
# shellcheck disable=SC2054 # the commas are docker's tmpfs options, not array separators
HARDENING=(
    --read-only
    --tmpfs /tmp:rw,noexec,nosuid,nodev,size=64m
    --tmpfs /home:rw,noexec,nosuid,nodev,size=64m
    --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges:true
    --network none --pids-limit 256
)

# playwright-core, pinned in scripts/browser/package{,-lock}.json, installed with `npm ci`
# under .tools/ (no browser download: the tests drive Debian's chromium).
BROWSER_SRC=$REPO/scripts/browser
PLAYWRIGHT_DIR=$REPO/.tools/browser

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || echo "$p"
    done
    # npm for playwright-core (nodesource's nodejs ships its own npm).
    if ! command -v npm >/dev/null; then
        echo nodejs
        echo npm
    fi
}

ensure_packages() {
    local missing=()
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
        hash -r
    fi
}

# Host files the image copies verbatim: the programs (resolved) and every shared library
# ldd lists for them, the dynamic loader included. Sorted, one per line.
runtime_files() {
    local prog real lib
    {
        for prog in "${PROGRAMS[@]}"; do
            real=$(readlink -f -- "$prog")
            [[ -x $real ]] || die "$prog missing (packages: ${PACKAGES[*]})"
            echo "$real"
            # "libX.so => /path (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)", "linux-vdso.so.1 (0x..)"
            if ldd -- "$real" | grep -q 'not found'; then
                die "ldd $real: $(ldd -- "$real" | grep 'not found' | tr -s ' \t' ' ')"
            fi
            while IFS= read -r lib; do
                [[ -n $lib ]] && echo "$lib"
            done < <(ldd -- "$real" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
        done
    } | sort -u
}

image_spec_hash() {
    local f d prog
    {
        # Content of every copied file (a library update rebuilds the image).
        runtime_files | while IFS= read -r f; do
            printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
        done
        for prog in "${PROGRAMS[@]}"; do
            printf '%s -> %s\n' "$prog" "$(readlink -f -- "$prog")"
        done
        for d in "${DATA_DIRS[@]}"; do
            (cd -- "$d" && find . \( -type f -o -type l \) -print0 | sort -z | xargs -0 -r sha256sum)
        done
        sha256sum "${DATA_FILES[@]}" 2>/dev/null || true
        sha256sum "$BUSYBOX" | cut -d' ' -f1
        printf '%s\n' "${APPLETS[@]}"
        printf '%s' "$IMAGE_PASSWD" "$IMAGE_GROUP"
        sha256sum <"$ENTRYPOINT"
        echo "layout-v1"
    } | sha256sum | cut -c1-16
}

# Copies a host file to the same path under ROOT, dereferencing symlinks.
copy_file() { # ROOT PATH
    local root=$1 path=$2
    mkdir -p -- "$root$(dirname -- "$path")"
    cp -L -- "$path" "$root$path"
}

build_image() { # SPEC_HASH
    local spec=$1 root
    root=$(mktemp -d /tmp/deskgate-desktop-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
    trap "rm -rf -- '$root'" EXIT
    # Merged /usr like the host, so ldd's /lib/... and /usr/lib/... paths both resolve.
    mkdir -p "$root"/usr/{bin,lib,lib64,local/bin} "$root"/{etc,tmp,root,home/desk,var/lib}
    ln -s usr/bin "$root/bin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"

    cp -- "$BUSYBOX" "$root/usr/bin/busybox"
    chmod 755 "$root/usr/bin/busybox"
    local applet
    for applet in "${APPLETS[@]}"; do
        ln -s busybox "$root/usr/bin/$applet"
    done

    local f prog real
    while IFS= read -r f; do
        copy_file "$root" "$f"
    done < <(runtime_files)
    # Plain names for the alternatives (Xvnc -> Xtigervnc, vncpasswd -> tigervncpasswd).
    for prog in "${PROGRAMS[@]}"; do
        real=$(readlink -f -- "$prog")
        if [[ $real != "$prog" ]]; then
            [[ $(dirname -- "$real") == "$(dirname -- "$prog")" ]] || die "$prog -> $real: not in the same directory"
            ln -sfn -- "$(basename -- "$real")" "$root$prog"
        fi
    done
    local d
    for d in "${DATA_DIRS[@]}"; do
        mkdir -p -- "$root$(dirname -- "$d")"
        cp -a -- "$d" "$root$d"
    done
    for f in "${DATA_FILES[@]}"; do
        [[ -e $f ]] && copy_file "$root" "$f"
    done
    # Compiled keymaps: the X server writes them to /var/lib/xkb when it runs as root
    # (/tmp otherwise); the root filesystem is read-only, so point that at /tmp.
    ln -s /tmp "$root/var/lib/xkb"

    cp -- "$ENTRYPOINT" "$root/usr/local/bin/deskgate-desktop"
    chmod 755 "$root/usr/local/bin/deskgate-desktop"
    log "importing $IMAGE (spec $spec)"
    import_rootfs "$root" "$IMAGE" \
        --change 'CMD ["/usr/local/bin/deskgate-desktop"]' \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin DISPLAY=:0' \
        --change 'WORKDIR /tmp' \
        --change "LABEL $SPEC_LABEL=$spec" \
        --message "deskgate desktop (TigerVNC Xvnc, busybox-static)"
    rm -rf -- "$root"
    trap - EXIT
}

# Runs the image under deskgate's hardening and checks: the VNC banner through the
# `nc` bridge, X clients on :0, nothing listening beyond 127.0.0.1:5900, no secret in
# the logs, and the refusal without a password.
check_image() {
    local name=deskgate-desktop-check-$$ password out
    password=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    docker rm -f "$name" >/dev/null 2>&1 || true
    # The password goes through the environment, not docker's command line.
    DESKGATE_VNC_PASSWORD=$password docker run -d --name "$name" "${HARDENING[@]}" \
        -e DESKGATE_VNC_PASSWORD "$IMAGE" >/dev/null
    local fail=""
    for _ in $(seq 1 100); do
        out=$(docker exec -i "$name" nc 127.0.0.1 5900 </dev/null 2>/dev/null | head -c 12 || true)
        [[ $out == "RFB 003.008" ]] && break
        if [[ $(docker inspect --format '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
            break
        fi
        sleep 0.1
    done
    if [[ $out != "RFB 003.008" ]]; then
        fail="no RFB banner on 127.0.0.1:5900 (got '${out}')"
    elif ! out=$(docker exec "$name" xdotool mousemove 10 20 getmouselocation 2>&1) ||
        [[ $out != *"x:10 y:20"* ]]; then
        fail="xdotool on :0: $out"
    elif ! out=$(docker exec "$name" xsetroot -solid '#ff8000' 2>&1); then
        fail="xsetroot on :0: $out"
    else
        # Listening TCP sockets (v4 and v6): only 127.0.0.1:5900 is allowed.
        out=$(docker exec "$name" netstat -ltn 2>&1 | awk '$1 ~ /^tcp/ { print $4 }' | sort -u | tr '\n' ' ')
        [[ $out == "127.0.0.1:5900 " ]] || fail="unexpected listening sockets: $out"
    fi
    if [[ -z $fail ]] && docker logs "$name" 2>&1 | grep -qF -- "$password"; then
        fail="the VNC password appears in docker logs"
    fi
    if [[ -n $fail ]]; then
        docker logs "$name" 2>&1 | tail -n 30 | sed 's/^/    /' >&2 || true
        docker rm -f "$name" >/dev/null 2>&1 || true
        die "$IMAGE check failed: $fail"
    fi
    docker rm -f "$name" >/dev/null
    # Without a password it must refuse (exit 2) rather than serve an open desktop.
    local rc=0
    out=$(docker run --rm "${HARDENING[@]}" "$IMAGE" 2>&1) || rc=$?
    [[ $rc -eq 2 && $out == *DESKGATE_VNC_PASSWORD* ]] ||
        die "$IMAGE without DESKGATE_VNC_PASSWORD: exit $rc, output: $out"
    log "checked $IMAGE: VNC on 127.0.0.1:5900 only, X on :0, refuses without a password"
}

ensure_image() {
    local p
    for p in tigervnc-standalone-server tigervnc-tools x11-xserver-utils xdotool xclip busybox-static; do
        if ! pkg_installed "$p"; then
            ensure_packages
            break
        fi
    done
    [[ -x $BUSYBOX ]] || die "$BUSYBOX missing even after installing busybox-static"
    local spec
    spec=$(image_spec_hash)
    if [[ $(image_label "$IMAGE" "$SPEC_LABEL") == "$spec" ]]; then
        return 0
    fi
    replace_image "$IMAGE" "$SPEC_LABEL" "$spec" build_image "$spec"
    check_image
    log "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
}

# ---------------------------------------------------------------- playwright-core

browser_stamp() { cat -- "$BROWSER_SRC/package.json" "$BROWSER_SRC/package-lock.json" | sha256sum | cut -c1-16; }

browser_current() {
    [[ -f $PLAYWRIGHT_DIR/node_modules/playwright-core/package.json ]] &&
        [[ $(cat -- "$PLAYWRIGHT_DIR/.deskgate-stamp" 2>/dev/null) == "$(browser_stamp)" ]]
}

ensure_browser_tools() {
    browser_current && return 0
    if ! command -v npm >/dev/null; then
        apt_install nodejs npm
        hash -r
    fi
    ensure_state_dir
    mkdir -p -- "$PLAYWRIGHT_DIR"
    cp -- "$BROWSER_SRC/package.json" "$BROWSER_SRC/package-lock.json" "$PLAYWRIGHT_DIR/"
    log "npm ci playwright-core into $PLAYWRIGHT_DIR"
    # The exact tree from the lock file; no install scripts and no browser download.
    if ! (cd -- "$PLAYWRIGHT_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund \
        --ignore-scripts --loglevel=error) >>"$STATE_DIR/npm.log" 2>&1; then
        show_log_tail "$STATE_DIR/npm.log"
        die "npm ci in $PLAYWRIGHT_DIR failed (log: $STATE_DIR/npm.log)"
    fi
    [[ -f $PLAYWRIGHT_DIR/node_modules/playwright-core/package.json ]] ||
        die "after npm ci, playwright-core is missing from $PLAYWRIGHT_DIR/node_modules"
    browser_stamp >"$PLAYWRIGHT_DIR/.deskgate-stamp"
}

print_paths() {
    local websockify
    websockify=$(command -v websockify || echo /usr/bin/websockify)
    printf '%s\n' \
        "DESKTOP_IMAGE=$IMAGE" \
        "NOVNC_DIR=$NOVNC_DIR" \
        "WEBSOCKIFY=$websockify" \
        "CHROMIUM=$CHROMIUM" \
        "XVNC=$XVNC" \
        "VNCPASSWD=$VNCPASSWD" \
        "PLAYWRIGHT_DIR=$PLAYWRIGHT_DIR"
}

docker_answers() { timeout 15 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

cmd_up() {
    docker_answers || die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    ensure_packages
    [[ -f $NOVNC_DIR/core/rfb.js ]] || die "$NOVNC_DIR/core/rfb.js missing (package novnc)"
    ensure_image
    ensure_browser_tools
}

case ${1:-up} in
up) cmd_up ;;
image)
    docker_answers || die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    ensure_image
    ;;
check)
    docker_answers || die "the Docker daemon does not answer; run: $REPO/scripts/docker.sh up"
    check_image
    ;;
browser) ensure_browser_tools ;;
paths) print_paths ;;
packages) missing_packages ;;
*) usage ;;
esac
