#!/bin/sh
# Writes coturn's configuration from the environment into a private tmpfs file (the
# secret is never on a command line) and runs turnserver in the foreground.
#   DESKGATE_TURN_SECRET    required: the gate's TURN REST secret
#   DESKGATE_TURN_REALM     default deskgate
#   DESKGATE_TURN_RELAY_TO  a host name of the network the desktops' video comes from
#                           (compose: `launcher`): relayed addresses are this server's
#                           own address on that network, so the launcher reaches them
#                           there and the relay ports need no publishing
#   DESKGATE_TURN_MIN_PORT / DESKGATE_TURN_MAX_PORT  relay range, default 49160-49200
# Browsers reach the server at the TURN URLs the gate hands out (DESKGATE_TURN_URLS);
# only its listening port, 3478, faces them.
set -eu
: "${DESKGATE_TURN_SECRET:?DESKGATE_TURN_SECRET is required}"
relay=
if [ -n "${DESKGATE_TURN_RELAY_TO:-}" ]; then
    peer=$(getent ahostsv4 "$DESKGATE_TURN_RELAY_TO" | awk 'NR == 1 { print $1 }')
    if [ -z "$peer" ]; then
        echo "deskgate-turn: cannot resolve $DESKGATE_TURN_RELAY_TO (DESKGATE_TURN_RELAY_TO)" >&2
        exit 1
    fi
    relay=$(ip -4 route get "$peer" | sed -n 's/.* src \([0-9.]*\).*/\1/p')
    if [ -z "$relay" ]; then
        echo "deskgate-turn: no address of this server reaches $DESKGATE_TURN_RELAY_TO ($peer)" >&2
        exit 1
    fi
    echo "deskgate-turn: relaying from $relay, on the network of $DESKGATE_TURN_RELAY_TO ($peer)" >&2
fi
umask 077
conf=$(mktemp)
{
    echo "listening-port=3478"
    echo "fingerprint"
    echo "use-auth-secret"
    echo "static-auth-secret=$DESKGATE_TURN_SECRET"
    echo "realm=${DESKGATE_TURN_REALM:-deskgate}"
    echo "min-port=${DESKGATE_TURN_MIN_PORT:-49160}"
    echo "max-port=${DESKGATE_TURN_MAX_PORT:-49200}"
    echo "no-tls"
    echo "no-dtls"
    echo "no-cli"
    echo "no-multicast-peers"
    echo "no-loopback-peers"
    echo "denied-peer-ip=0.0.0.0-0.255.255.255"
    echo "denied-peer-ip=169.254.0.0-169.254.255.255"
    echo "log-file=stdout"
    echo "simple-log"
    [ -n "$relay" ] && echo "relay-ip=$relay"
    true
} >"$conf"
unset DESKGATE_TURN_SECRET
exec turnserver -c "$conf"
