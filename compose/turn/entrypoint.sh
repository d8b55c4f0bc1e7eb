#!/bin/sh
# Writes coturn's configuration from the environment into a private tmpfs file (the
# secret is never on a command line) and runs turnserver in the foreground.
#   DESKGATE_TURN_SECRET       required: the gate's TURN REST secret
#   DESKGATE_TURN_REALM        default deskgate
#   DESKGATE_TURN_EXTERNAL_IP  the host's public IP (what browsers reach), if NATed
#   DESKGATE_TURN_MIN_PORT / DESKGATE_TURN_MAX_PORT  relay range, default 49160-49200
set -eu
: "${DESKGATE_TURN_SECRET:?DESKGATE_TURN_SECRET is required}"
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
    [ -n "${DESKGATE_TURN_EXTERNAL_IP:-}" ] && echo "external-ip=$DESKGATE_TURN_EXTERNAL_IP"
    true
} >"$conf"
unset DESKGATE_TURN_SECRET
exec turnserver -c "$conf"
