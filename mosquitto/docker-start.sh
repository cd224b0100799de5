#!/bin/sh
# Start Mosquitto in the eclipse-mosquitto container of docker-compose.yml.
#
# The broker users come from the environment (.env), so a fresh clone needs nothing but
# `cp .env.example .env` (with passwords set) and `docker compose up -d`: the master's user
# (CLUSTER_PASSWORD), the demo node's (PICLUSTER_DEMO_NODE_PASSWORD, optional), and any users
# an admin added to mosquitto/passwd with mosquitto/add-user.sh (optional, kept as they are).
# Mosquitto reads the files after dropping to its own user, which cannot read the host's
# 0600 files: they are written here with its ownership.
set -eu

HOST_DIR=${PICLUSTER_HOST_DIR:-/picluster/host}
CONFIG_DIR=${PICLUSTER_CONFIG_DIR:-/mosquitto/config}
CONF=${PICLUSTER_MOSQUITTO_CONF:-/picluster/mosquitto.conf}
OWNER=${PICLUSTER_MOSQUITTO_USER:-mosquitto}

if [ -z "${CLUSTER_PASSWORD:-}" ]; then
    echo "docker-start: CLUSTER_PASSWORD is not set: copy .env.example to .env and set it" >&2
    exit 2
fi

passwd="$CONFIG_DIR/passwd"
umask 077
if [ -f "$HOST_DIR/passwd" ]; then
    cp "$HOST_DIR/passwd" "$passwd"
else
    : > "$passwd"
fi
mosquitto_passwd -b "$passwd" picluster-master "$CLUSTER_PASSWORD"
if [ -n "${PICLUSTER_DEMO_NODE_PASSWORD:-}" ]; then
    mosquitto_passwd -b "$passwd" demo-node "$PICLUSTER_DEMO_NODE_PASSWORD"
fi
cp "$HOST_DIR/acl" "$CONFIG_DIR/acl"
chmod 0644 "$CONFIG_DIR/acl"
chown "$OWNER:$OWNER" "$passwd" "$CONFIG_DIR/acl"
exec mosquitto -c "$CONF"
