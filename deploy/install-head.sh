#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Set up (or remove) the head node without containers: Mosquitto, broker users, the master.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
# shellcheck source=installer-lib.sh
source "$SCRIPT_DIR/installer-lib.sh"

usage() {
    cat <<USAGE
Usage: sudo $(basename "$0") --node ID [--node ID ...] [options]
       sudo $(basename "$0") --uninstall

Sets up the head node:
  - Mosquitto from apt, with the project's mosquitto.conf and ACL (the original config is
    kept as /etc/mosquitto/mosquitto.conf.picluster-orig and restored by --uninstall);
  - broker users: picluster-master, homeassistant and one per node (name = node id), each
    with a generated password stored under /etc/picluster (root only, except the master's);
  - picluster with the master extra in /opt/picluster/venv, /etc/picluster/master.toml and
    picluster-master.service, enabled and started.
Running it again changes nothing; with more --node options it adds those users (and reloads
Mosquitto), with --http it changes only that key in master.toml: the settings not given again,
the api_token and hand edits included, are kept.
Then, on each node:  sudo deploy/install-node.sh --broker mqtt://HEAD --password-file FILE
with FILE a copy of /etc/picluster/nodes/ID.password from this machine.

Options:
  --node ID             add a broker user for this node (repeat, or --nodes a,b,c)
  --nodes LIST          comma-separated node ids
  --http HOST:PORT      where the API and dashboard listen (first install: 127.0.0.1:8080;
                        later: what master.toml says). Any other address than loopback gets
                        a generated api_token in master.toml, kept from then on
  --no-homeassistant    no broker user for Home Assistant
  --source DIR|WHEEL    picluster checkout or wheel to install (default: $REPO_DIR)
  --python PYTHON       Python $MIN_PYTHON+ to build the venv with (default: python3)
  --prefix DIR          install under DIR instead of / (no apt, no user, no systemctl; tests)
  --no-systemd          do not install or start the systemd units (start the master yourself,
                        as the picluster user)
  --uninstall           stop and remove everything this script installed (not the
                        mosquitto package itself)
  -h, --help            show this help
USAGE
}

PREFIX=""
PYTHON=python3
SOURCE="$REPO_DIR"
USE_SYSTEMD=true
UNINSTALL=false
NODES=()
HTTP=""
readonly DEFAULT_HTTP="127.0.0.1:8080"
HOME_ASSISTANT=true
CHANGED=false

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --node) need_value "$@"; NODES+=("$2"); shift 2 ;;
        --nodes) need_value "$@"; IFS=, read -r -a more <<<"$2"; NODES+=("${more[@]}"); shift 2 ;;
        --http) need_value "$@"; HTTP="$2"; shift 2 ;;
        --no-homeassistant) HOME_ASSISTANT=false; shift ;;
        --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --prefix) need_value "$@"; PREFIX="$(realpath -m "$2")"; shift 2 ;;
        --no-systemd) USE_SYSTEMD=false; shift ;;
        --uninstall) UNINSTALL=true; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$PREFIX" == "/" ]] && PREFIX=""
set_paths
set_systemctl
MOSQ_DIR="$PREFIX/etc/mosquitto"
MOSQ_CONF="$MOSQ_DIR/mosquitto.conf"
MOSQ_PASSWD="$MOSQ_DIR/passwd"
MOSQ_ACL="$MOSQ_DIR/acl"
ORIG_SUFFIX=".picluster-orig"
CONFIG="$ETC_DIR/master.toml"
MASTER_PASSWORD="$ETC_DIR/master.password"
HA_PASSWORD="$ETC_DIR/homeassistant.password"
NODE_PASSWORDS="$ETC_DIR/nodes"
UNIT="$UNIT_DIR/picluster-master.service"

require_mosquitto() {
    if command -v mosquitto_passwd >/dev/null 2>&1 &&
        { command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; }; then
        return 0
    fi
    if real_system && command -v apt-get >/dev/null 2>&1; then
        say "installing Mosquitto from apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients ||
            die "apt-get could not install mosquitto"
        return 0
    fi
    die "Mosquitto is not installed and apt-get is not available here: install mosquitto and mosquitto-clients first"
}

# The project's broker config with its paths moved under PREFIX (unchanged on the real system).
mosquitto_conf_text() {
    sed -e "s#/etc/mosquitto/#$PREFIX/etc/mosquitto/#g" \
        -e "s#/var/lib/mosquitto/#$PREFIX/var/lib/mosquitto/#g" \
        -e "s#/var/log/mosquitto/#$PREFIX/var/log/mosquitto/#g" \
        -e "s#/run/mosquitto/#$PREFIX/run/mosquitto/#g" \
        "$REPO_DIR/mosquitto/mosquitto.conf"
}

# Keep the admin's own file (on the first install only), so that --uninstall can put it back.
keep_original() {
    if [[ -e "$1" && ! -e "$1$ORIG_SUFFIX" ]]; then
        cp -p "$1" "$1$ORIG_SUFFIX"
        say "kept the original $1 as $1$ORIG_SUFFIX"
    fi
}

restore_original() {
    if [[ -e "$1$ORIG_SUFFIX" ]]; then
        mv -f "$1$ORIG_SUFFIX" "$1"
        say "restored the original $1"
    else
        rm -f "$1"
    fi
}

new_password() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n' | head -c 32; }

# A broker user whose password lives in FILE: generated once, then kept.
ensure_broker_user() {
    local name="$1" file="$2" mode="$3"
    if [[ ! -s "$file" ]]; then
        new_password | put_file "$file" "$mode"
    fi
    if ! grep -q "^$name:" "$MOSQ_PASSWD" 2>/dev/null; then
        say "adding the broker user $name"
        "$REPO_DIR/mosquitto/add-user.sh" "$name" --password-file "$MOSQ_PASSWD" <"$file" >/dev/null
        BROKER_RELOAD=true
    fi
}

loopback() {
    case "$1" in
        127.0.0.1:* | localhost:* | "[::1]":*) return 0 ;;
        *) return 1 ;;
    esac
}

# The config of a first install.
master_config() {
    local token_line='# api_token = "..." (required once http listens beyond this machine)'
    loopback "$HTTP" || token_line="api_token = \"$(new_password)\""
    cat <<TOML
# picluster master, written by deploy/install-head.sh (re-run it to change these).
# Keys: see deploy/master.toml.example. The broker password is in password_file.
broker = "mqtt://picluster-master@127.0.0.1:1883"
password_file = "$MASTER_PASSWORD"
db = "$STATE_DIR/master.db"
http = "$HTTP"
$token_line
ha_discovery = true
log_level = "INFO"
TOML
}

# The existing config with --http applied (and a token added if it now needs one), every
# other line kept: a re-run to add a node must not move the dashboard or drop the token.
updated_master_config() {
    local http="${HTTP:-$(toml_get "$CONFIG" http)}" token=""
    if ! loopback "$http" && [[ -z "$(toml_get "$CONFIG" api_token)" ]]; then
        token="\"$(new_password)\""
    fi
    toml_set http "${HTTP:+\"$HTTP\"}" <"$CONFIG" | toml_set api_token "$token"
}

uninstall() {
    require_root_for_real_system
    local drive_systemd=false
    [[ -n "$SYSTEMCTL" ]] && command -v "$SYSTEMCTL" >/dev/null 2>&1 && drive_systemd=true
    if [[ "$drive_systemd" == true && -f "$UNIT" ]]; then
        "$SYSTEMCTL" disable --now picluster-master.service || warn "could not stop picluster-master"
    fi
    rm -f "$UNIT" "$CONFIG" "$MASTER_PASSWORD" "$HA_PASSWORD"
    rm -rf "$NODE_PASSWORDS"
    rm -f "$STATE_DIR/master.db"{,-wal,-shm,-journal}
    restore_original "$MOSQ_CONF"
    restore_original "$MOSQ_ACL"
    restore_original "$MOSQ_PASSWD"
    if [[ "$drive_systemd" == true ]]; then
        "$SYSTEMCTL" daemon-reload || true
        "$SYSTEMCTL" try-restart mosquitto.service || warn "could not restart mosquitto"
    fi
    if [[ -f "$ETC_DIR/node.toml" ]]; then
        say "the node agent is installed here too: keeping $VENV, $STATE_DIR and the user"
    else
        rm -rf "$VENV" "$STATE_DIR"
        rmdir "$OPT_DIR" "$ETC_DIR" 2>/dev/null || true
        remove_service_user
    fi
    if ! real_system; then
        rm -rf "$PREFIX/var/lib/mosquitto" "$PREFIX/var/log/mosquitto" "$PREFIX/run/mosquitto"
        prune_empty_dirs "$UNIT_DIR" "$OPT_DIR" "$ETC_DIR" "$STATE_DIR" "$MOSQ_DIR" \
            "$PREFIX/var/lib" "$PREFIX/var/log" "$PREFIX/run"
    fi
    say "picluster head removed (the mosquitto package stays installed)"
}

install() {
    require_root_for_real_system
    require_python
    require_systemd
    check_source
    local node
    for node in "${NODES[@]}"; do
        valid_node_id "$node" ||
            die "node id '$node' is not valid: lower-case letters, digits, '_' and '-', at most 63"
        [[ "$node" != picluster-master && "$node" != homeassistant ]] ||
            die "'$node' is a broker user of its own: choose another node id"
    done
    [[ -z "$HTTP" || "$HTTP" =~ ^.+:[0-9]+$ ]] || die "--http must be HOST:PORT, e.g. 0.0.0.0:8080"
    require_mosquitto

    ensure_service_user
    install_venv "master"
    ensure_state_dir
    local master_changed=$CHANGED

    # Broker: config, ACL, users. Mosquitto reads passwd and acl as the 'mosquitto' user.
    local conf_changed=false
    BROKER_RELOAD=false
    mkdir -p "$MOSQ_DIR"
    if ! real_system; then
        mkdir -p "$PREFIX/var/lib/mosquitto" "$PREFIX/var/log/mosquitto" "$PREFIX/run/mosquitto"
    fi
    if ! grep -q '^# picluster' "$MOSQ_CONF" 2>/dev/null; then
        keep_original "$MOSQ_CONF"
        keep_original "$MOSQ_ACL"
        keep_original "$MOSQ_PASSWD"
    fi
    CHANGED=false
    mosquitto_conf_text | put_file "$MOSQ_CONF" 0644
    conf_changed=$CHANGED
    CHANGED=false
    put_file "$MOSQ_ACL" 0644 <"$REPO_DIR/mosquitto/acl"
    BROKER_RELOAD=$CHANGED
    CHANGED=false
    # Only the master's password is readable by the service (0640 root:picluster); the
    # others (0600 root) are for the admin to hand over.
    ensure_broker_user picluster-master "$MASTER_PASSWORD" 0640
    [[ "$CHANGED" == true ]] && master_changed=true
    if [[ "$HOME_ASSISTANT" == true ]]; then
        ensure_broker_user homeassistant "$HA_PASSWORD" 0600
    fi
    mkdir -p "$NODE_PASSWORDS"
    chmod 0700 "$NODE_PASSWORDS"
    for node in "${NODES[@]}"; do
        ensure_broker_user "$node" "$NODE_PASSWORDS/$node.password" 0600
    done

    CHANGED=false
    if [[ -f "$CONFIG" ]]; then
        updated_master_config | put_file "$CONFIG" 0640
    else
        HTTP="${HTTP:-$DEFAULT_HTTP}"
        master_config | put_file "$CONFIG" 0640
    fi
    [[ "$CHANGED" == true ]] && master_changed=true
    CHANGED=false
    if [[ "$USE_SYSTEMD" == true ]]; then
        unit_text "$SCRIPT_DIR/picluster-master.service" | put_file "$UNIT" 0644
    fi
    local unit_changed=$CHANGED
    if manages_services; then
        [[ "$unit_changed" == true ]] && "$SYSTEMCTL" daemon-reload
        # Mosquitto re-reads its password file and ACL on SIGHUP; its own config needs a restart.
        local mosquitto=none master=none
        if [[ "$conf_changed" == true ]]; then
            mosquitto=restart
        elif [[ "$BROKER_RELOAD" == true ]]; then
            mosquitto=reload
        fi
        [[ "$master_changed" == true || "$unit_changed" == true ]] && master=restart
        apply_service mosquitto.service "$mosquitto"
        apply_service picluster-master.service "$master"
        [[ "$VENV_CHANGED" == true ]] &&
            restart_sibling_if_running "$ETC_DIR/node.toml" picluster-node.service
        say "running: systemctl status mosquitto picluster-master"
    elif [[ "$USE_SYSTEMD" == false ]]; then
        say "no systemd unit: start the master as the picluster user, e.g."
        say "  sudo -u $SERVICE_USER $VENV/bin/cluster-master run --config $CONFIG"
    fi

    say "done. The dashboard: http://$(toml_get "$CONFIG" http)/"
    if [[ ${#NODES[@]} -gt 0 ]]; then
        say "node passwords are in $NODE_PASSWORDS/; on each node run, e.g.:"
        echo "    ssh $(hostname) sudo cat $NODE_PASSWORDS/${NODES[0]}.password > ${NODES[0]}.password"
        echo "    sudo deploy/install-node.sh --broker mqtt://$(hostname).local --password-file ${NODES[0]}.password"
    fi
    if [[ "$HOME_ASSISTANT" == true ]]; then
        say "Home Assistant: MQTT integration with user homeassistant, password in $HA_PASSWORD"
    fi
}

if [[ "$UNINSTALL" == true ]]; then
    uninstall
else
    install
fi
