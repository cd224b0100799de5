#!/bin/sh
# Start Mosquitto in the eclipse-mosquitto container of docker-compose.yml.
#
# A fresh clone needs nothing but `cp .env.example .env` (with passwords set) and
# `docker compose up -d`. By default the broker keeps its users in the dynamic security plugin
# (mosquitto/docker-dynsec.conf): on the first start, with no plugin JSON in the data volume
# yet, this script writes it: the master's user picluster-master (password CLUSTER_PASSWORD)
# as the plugin's admin, with the master's topic rights, and the demo node's user when
# PICLUSTER_DEMO_NODE_PASSWORD is set. The master then adds and removes nodes itself
# (`cluster-master nodes add`). After that first start the JSON is the broker's and is kept.
#
# With PICLUSTER_BROKER_AUTH=static the broker uses a password file and ACL instead
# (mosquitto/docker.conf), written at every start from .env plus any users an admin added to
# mosquitto/passwd with mosquitto/add-user.sh.
# Mosquitto reads its files after dropping to its own user: they are written with its
# ownership.
set -eu

HOST_DIR=${PICLUSTER_HOST_DIR:-/picluster/host}
CONFIG_DIR=${PICLUSTER_CONFIG_DIR:-/mosquitto/config}
DATA_DIR=${PICLUSTER_DATA_DIR:-/mosquitto/data}
OWNER=${PICLUSTER_MOSQUITTO_USER:-mosquitto}
AUTH=${PICLUSTER_BROKER_AUTH:-dynsec}
PLUGIN=${PICLUSTER_DYNSEC_PLUGIN:-/usr/lib/mosquitto_dynamic_security.so}
# The first start's set-up broker listens here, on loopback only, and stops before the real one.
INIT_PORT=${PICLUSTER_INIT_PORT:-1884}
PREFIX=${CLUSTER_PREFIX:-cluster}
HA_PREFIX=${CLUSTER_HA_PREFIX:-homeassistant}
MASTER=picluster-master

say() { echo "docker-start: $*" >&2; }

if [ -z "${CLUSTER_PASSWORD:-}" ]; then
    say "CLUSTER_PASSWORD is not set: copy .env.example to .env and set it"
    exit 2
fi

start_static() {
    CONF=${PICLUSTER_MOSQUITTO_CONF:-$HOST_DIR/docker.conf}
    passwd="$CONFIG_DIR/passwd"
    umask 077
    if [ -f "$HOST_DIR/passwd" ]; then
        cp "$HOST_DIR/passwd" "$passwd"
    else
        : > "$passwd"
    fi
    mosquitto_passwd -b "$passwd" "$MASTER" "$CLUSTER_PASSWORD"
    if [ -n "${PICLUSTER_DEMO_NODE_PASSWORD:-}" ]; then
        mosquitto_passwd -b "$passwd" demo-node "$PICLUSTER_DEMO_NODE_PASSWORD"
    fi
    cp "$HOST_DIR/acl" "$CONFIG_DIR/acl"
    chmod 0644 "$CONFIG_DIR/acl"
    chown "$OWNER:$OWNER" "$passwd" "$CONFIG_DIR/acl"
    exec mosquitto -c "$CONF"
}

# One `mosquitto_ctrl dynsec` command as CTRL_USER against the set-up broker. mosquitto_ctrl
# exits 0 even when the broker refused: its error is on standard error.
ctrl() {
    if ! answer=$(mosquitto_ctrl -h 127.0.0.1 -p "$INIT_PORT" -u "$CTRL_USER" -P "$CTRL_PASSWORD" \
        dynsec "$@" 2>&1) || printf '%s\n' "$answer" | grep -q 'rror'; then
        printf '%s\n' "$answer" | grep -v -e '^Warning: You are running' -e '^This means all' \
            -e '^$' >&2
        return 1
    fi
}

# A role with ACLs given as "acltype topic" words in pairs.
role() {
    name=$1
    shift
    ctrl createRole "$name"
    while [ $# -ge 2 ]; do
        ctrl addRoleACL "$name" "$1" "$2" allow
        shift 2
    done
}

# The plugin's first JSON, made by the plugin itself on a broker only this script reaches (so
# this very Mosquitto hashes the passwords, whatever its version): a one-off admin from
# `mosquitto_ctrl dynsec init` creates the master's client with the admin role and its own
# role, and the master deletes the one-off admin. (A client that changes its own roles is
# disconnected before it gets the answer: hence the one-off admin.)
init_dynsec() {
    json=$1
    partial="$json.partial"
    rm -f "$partial"
    umask 077
    CTRL_USER=picluster-setup
    CTRL_PASSWORD=$(tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32)
    mosquitto_ctrl dynsec init "$partial" "$CTRL_USER" "$CTRL_PASSWORD" > /dev/null
    chown "$OWNER:$OWNER" "$partial"
    conf="$CONFIG_DIR/dynsec-init.conf"
    umask 022
    printf '%s\n' "listener $INIT_PORT 127.0.0.1" "allow_anonymous false" \
        "plugin $PLUGIN" "plugin_opt_config_file $partial" "log_type error" > "$conf"
    mosquitto -c "$conf" &
    broker=$!
    # Whatever fails below, the set-up broker does not outlive this script.
    trap 'kill "$broker" 2> /dev/null || true' EXIT
    # Wait for the listener: mosquitto_ctrl fails at once while nothing listens.
    tries=0
    until ctrl getDefaultACLAccess > /dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 150 ] || ! kill -0 "$broker" 2> /dev/null; then
            say "the set-up broker did not answer on 127.0.0.1:$INIT_PORT"
            ctrl getDefaultACLAccess || true
            exit 1
        fi
        sleep 0.1
    done
    # The master's rights, as mosquitto/acl gives user picluster-master (and
    # master_service/enrollment/dynsec_init.py writes them on a head without containers).
    role "$MASTER" \
        subscribePattern "$PREFIX/#" \
        subscribePattern "$HA_PREFIX/status" \
        publishClientSend "$PREFIX/_master/#" \
        publishClientSend "$PREFIX/+/cmd/#" \
        publishClientSend "$PREFIX/+/status" \
        publishClientSend "$PREFIX/+/machine_details" \
        publishClientSend "$HA_PREFIX/#"
    ctrl createClient "$MASTER" -p "$CLUSTER_PASSWORD"
    ctrl addClientRole "$MASTER" admin
    ctrl addClientRole "$MASTER" "$MASTER"
    if [ -n "${PICLUSTER_DEMO_NODE_PASSWORD:-}" ]; then
        # A node's client and role, named as `cluster-master nodes add` names them.
        role picluster-node-demo-node \
            publishClientSend "$PREFIX/demo-node/#" \
            subscribePattern "$PREFIX/demo-node/cmd/#" \
            subscribePattern "$PREFIX/_master/status"
        ctrl createClient demo-node -p "$PICLUSTER_DEMO_NODE_PASSWORD"
        ctrl addClientRole demo-node picluster-node-demo-node
    fi
    CTRL_USER=$MASTER
    CTRL_PASSWORD=$CLUSTER_PASSWORD
    ctrl deleteClient picluster-setup
    kill "$broker"
    wait "$broker" || true
    trap - EXIT
    rm -f "$conf"
    mv "$partial" "$json"
    say "wrote $json: $MASTER is the dynamic security admin"
}

start_dynsec() {
    CONF=${PICLUSTER_MOSQUITTO_CONF:-$HOST_DIR/docker-dynsec.conf}
    json="$DATA_DIR/dynamic-security.json"
    if [ ! -s "$json" ]; then
        init_dynsec "$json"
    fi
    exec mosquitto -c "$CONF"
}

case "$AUTH" in
    dynsec) start_dynsec ;;
    static) start_static ;;
    *)
        say "PICLUSTER_BROKER_AUTH must be dynsec or static, got '$AUTH'"
        exit 2
        ;;
esac
