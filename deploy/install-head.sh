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
Usage: sudo $(basename "$0") [options]
       sudo $(basename "$0") --static-passwords --node ID [--node ID ...] [options]
       sudo $(basename "$0") --uninstall

Sets up the head node:
  - Mosquitto from apt with the project's configuration (the original is kept as
    /etc/mosquitto/mosquitto.conf.picluster-orig and restored by --uninstall). By default
    mosquitto/dynsec.conf: the dynamic security plugin keeps the broker's users in
    /var/lib/mosquitto/dynamic-security.json, first written with the master's user
    picluster-master as its admin (and homeassistant); nodes are then added and removed by the
    master with no broker restart:  cluster-master nodes add ID  prints the one command to run
    on the new node. With --static-passwords: mosquitto/mosquitto.conf, a password file and
    mosquitto/acl, one broker user per --node;
  - passwords generated once under /etc/picluster (root only, except the master's);
  - picluster with the master extra in /opt/picluster/venv (its source in /opt/picluster/src,
    which the master serves to new nodes), /etc/picluster/master.toml and
    picluster-master.service, enabled and started.
Running it again changes nothing; with --http it changes only that key in master.toml (the
settings not given again, the api_token and hand edits included, are kept); a re-run without
--static-passwords or --dynamic-security keeps the mode installed. Only what changed is
restarted (Mosquitto is reloaded when only its users or ACL changed).
With --static-passwords, on each node:
  sudo deploy/install-node.sh --broker mqtt://HEAD --password-file FILE
with FILE a copy of /etc/picluster/nodes/ID.password from this machine.

Options:
  --static-passwords    a password file and ACL instead of the dynamic security plugin
  --dynamic-security    the dynamic security plugin (the default; switches a static head back)
  --node ID             (--static-passwords) add a broker user for this node (repeat, or
                        --nodes a,b,c)
  --nodes LIST          (--static-passwords) comma-separated node ids
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
AUTH=""
CHANGED=false

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --node) need_value "$@"; NODES+=("$2"); shift 2 ;;
        --nodes) need_value "$@"; IFS=, read -r -a more <<<"$2"; NODES+=("${more[@]}"); shift 2 ;;
        --http) need_value "$@"; HTTP="$2"; shift 2 ;;
        --no-homeassistant) HOME_ASSISTANT=false; shift ;;
        --static-passwords) AUTH=static; shift ;;
        --dynamic-security) AUTH=dynsec; shift ;;
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
MOSQ_DYNSEC="$PREFIX/var/lib/mosquitto/dynamic-security.json"
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

# The mode a picluster broker config installed here uses (dynsec or static); empty if none.
installed_auth() {
    grep -q '^# picluster' "$MOSQ_CONF" 2>/dev/null || return 0
    if grep -q '^plugin_opt_config_file' "$MOSQ_CONF"; then
        echo dynsec
    elif grep -q '^password_file' "$MOSQ_CONF"; then
        echo static
    fi
}

# Where this system's Mosquitto keeps the dynamic security plugin (Debian: a multiarch path).
find_dynsec_plugin() {
    local candidate
    for candidate in ${PICLUSTER_DYNSEC_PLUGIN:-} /usr/lib/*/mosquitto_dynamic_security.so \
        /usr/lib/mosquitto_dynamic_security.so /usr/local/lib/mosquitto_dynamic_security.so; do
        if [[ -f "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    die "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so, part of Mosquitto 2) is not installed: upgrade mosquitto, or use --static-passwords"
}

# The project's broker config with its paths moved under PREFIX (unchanged on the real system)
# and, with the plugin, this system's plugin path.
mosquitto_conf_text() {
    local source="$REPO_DIR/mosquitto/mosquitto.conf" plugin=""
    if [[ "$AUTH" == dynsec ]]; then
        source="$REPO_DIR/mosquitto/dynsec.conf"
        plugin="$(find_dynsec_plugin)"
    fi
    sed -e "s#/etc/mosquitto/#$PREFIX/etc/mosquitto/#g" \
        -e "s#/var/lib/mosquitto/#$PREFIX/var/lib/mosquitto/#g" \
        -e "s#/var/log/mosquitto/#$PREFIX/var/log/mosquitto/#g" \
        -e "s#/run/mosquitto/#$PREFIX/run/mosquitto/#g" \
        -e "s#^plugin .*#plugin $plugin#" \
        "$source"
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

# A password in FILE: generated once, then kept (CHANGED=true when generated).
ensure_password_file() {
    local file="$1" mode="$2"
    if [[ ! -s "$file" ]]; then
        new_password | put_file "$file" "$mode"
    fi
}

# A broker user in the password file whose password lives in FILE: generated once, then kept.
ensure_broker_user() {
    local name="$1" file="$2" mode="$3"
    ensure_password_file "$file" "$mode"
    if ! grep -q "^$name:" "$MOSQ_PASSWD" 2>/dev/null; then
        say "adding the broker user $name"
        "$REPO_DIR/mosquitto/add-user.sh" "$name" --password-file "$MOSQ_PASSWD" <"$file" >/dev/null
        BROKER_RELOAD=true
    fi
}

# The dynamic security plugin's first JSON (master_service/enrollment/dynsec_init.py): the
# master's user as the plugin's admin with its topic rights, and Home Assistant's user. An
# existing file is the broker's and left alone. BROKER_RESTART=true when it was written.
ensure_dynsec_json() {
    [[ -s "$MOSQ_DYNSEC" ]] && return 0
    local args=("$MOSQ_DYNSEC" --password-file "$MASTER_PASSWORD")
    [[ "$HOME_ASSISTANT" == true ]] && args+=(--ha-password-file "$HA_PASSWORD")
    if real_system && getent passwd mosquitto >/dev/null; then
        args+=(--owner mosquitto)
    fi
    mkdir -p "$(dirname "$MOSQ_DYNSEC")"
    "$VENV/bin/python" -m master_service.enrollment.dynsec_init "${args[@]}" >/dev/null ||
        die "could not write $MOSQ_DYNSEC"
    say "wrote $MOSQ_DYNSEC: picluster-master is the dynamic security admin"
    BROKER_RESTART=true
}

loopback() {
    case "$1" in
        127.0.0.1:* | localhost:* | "[::1]":*) return 0 ;;
        *) return 1 ;;
    esac
}

# The config of a first install.
master_config() {
    local token_line='# api_token = "..." (an admin bearer token for scripts; docs/security.md)'
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
    restore_original "$MOSQ_DYNSEC"
    if [[ "$drive_systemd" == true ]]; then
        "$SYSTEMCTL" daemon-reload || true
        "$SYSTEMCTL" try-restart mosquitto.service || warn "could not restart mosquitto"
    fi
    if [[ -f "$ETC_DIR/node.toml" ]]; then
        say "the node agent is installed here too: keeping $VENV, $STATE_DIR and the user"
    else
        rm -rf "$VENV" "$SRC_DIR" "$STATE_DIR"
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
    AUTH="${AUTH:-$(installed_auth)}"
    AUTH="${AUTH:-dynsec}"
    if [[ "$AUTH" == dynsec && ${#NODES[@]} -gt 0 ]]; then
        die "--node and --nodes are for --static-passwords: with the dynamic security plugin (the default) add a node with '$VENV/bin/cluster-master nodes add ID' once the head runs (docs/deploy.md)"
    fi
    local node
    for node in "${NODES[@]}"; do
        valid_node_id "$node" ||
            die "node id '$node' is not valid: lower-case letters, digits, '_' and '-', at most 63"
        [[ "$node" != picluster-master && "$node" != homeassistant ]] ||
            die "'$node' is a broker user of its own: choose another node id"
    done
    [[ -z "$HTTP" || "$HTTP" =~ ^.+:[0-9]+$ ]] || die "--http must be HOST:PORT, e.g. 0.0.0.0:8080"
    require_mosquitto
    [[ "$AUTH" == static ]] || find_dynsec_plugin >/dev/null
    if [[ "$AUTH" == dynsec && -f "$SOURCE" ]]; then
        warn "installed from a wheel, the master has no source tree to serve new nodes (GET /install/... answers 404): install from a picluster checkout for 'nodes add'"
    fi
    local previous_auth
    previous_auth="$(installed_auth)"

    ensure_service_user
    install_venv "master"
    ensure_state_dir
    local master_changed=$CHANGED

    # Broker: config, then its users (password file and ACL, or the plugin's JSON). Mosquitto
    # reads them as the 'mosquitto' user.
    local conf_changed=false
    BROKER_RELOAD=false
    BROKER_RESTART=false
    mkdir -p "$MOSQ_DIR"
    if ! real_system; then
        mkdir -p "$PREFIX/var/lib/mosquitto" "$PREFIX/var/log/mosquitto" "$PREFIX/run/mosquitto"
    fi
    if ! grep -q '^# picluster' "$MOSQ_CONF" 2>/dev/null; then
        keep_original "$MOSQ_CONF"
        keep_original "$MOSQ_ACL"
        keep_original "$MOSQ_PASSWD"
        keep_original "$MOSQ_DYNSEC"
        # A plugin JSON of the admin's own would not make our master its admin.
        rm -f "$MOSQ_DYNSEC"
    fi
    CHANGED=false
    mosquitto_conf_text | put_file "$MOSQ_CONF" 0644
    conf_changed=$CHANGED
    # Only the master's password is readable by the service (0640 root:picluster); the
    # others (0600 root) are for the admin to hand over.
    if [[ "$AUTH" == static ]]; then
        CHANGED=false
        put_file "$MOSQ_ACL" 0644 <"$REPO_DIR/mosquitto/acl"
        BROKER_RELOAD=$CHANGED
        CHANGED=false
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
    else
        CHANGED=false
        ensure_password_file "$MASTER_PASSWORD" 0640
        [[ "$CHANGED" == true ]] && master_changed=true
        if [[ "$HOME_ASSISTANT" == true ]]; then
            ensure_password_file "$HA_PASSWORD" 0600
        fi
        ensure_dynsec_json
        if [[ "$previous_auth" == static && "$conf_changed" == true ]]; then
            warn "the broker now uses the dynamic security plugin: the nodes' static passwords no longer work; add each node again with '$VENV/bin/cluster-master nodes add ID' (or re-run with --static-passwords)"
        fi
    fi

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
        # Mosquitto re-reads its password file and ACL on SIGHUP; its own config, and the
        # plugin's JSON (read at start only), need a restart.
        local mosquitto=none master=none
        if [[ "$conf_changed" == true || "$BROKER_RESTART" == true ]]; then
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

    local http
    http="$(toml_get "$CONFIG" http)"
    say "done. The dashboard: http://$http/"
    if ! loopback "$http"; then
        say "  it needs a login (docs/security.md); make yours, then one per person:"
        say "  sudo $VENV/bin/cluster-master users add NAME --role admin   (or --role viewer)"
    fi
    if [[ "$AUTH" == dynsec ]]; then
        local api="" host="${http%:*}"
        [[ "$host" == 0.0.0.0 || "$host" == "[::]" ]] && host=127.0.0.1
        [[ "$host:${http##*:}" == "$DEFAULT_HTTP" ]] || api=" --api http://$host:${http##*:}"
        say "add a node: $VENV/bin/cluster-master nodes add ID$api"
        if [[ -n "$(toml_get "$CONFIG" api_token)" ]]; then
            say "  (with CLUSTER_API_TOKEN set to the api_token in $CONFIG)"
        else
            say "  (nodes reach the master only once it listens beyond loopback: --http 0.0.0.0:8080)"
        fi
        say "  it prints the one command to run on the new node (docs/deploy.md)"
    elif [[ ${#NODES[@]} -gt 0 ]]; then
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
