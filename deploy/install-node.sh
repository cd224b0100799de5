#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Set up (or remove) the picluster node agent on this machine: one command, safe to re-run.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=installer-lib.sh
source "$SCRIPT_DIR/installer-lib.sh"

usage() {
    cat <<USAGE
Usage: sudo $(basename "$0") --broker mqtt://[NODE_ID@]HEAD[:PORT] [options]
       sudo $(basename "$0") --enroll http://HEAD:8080 TOKEN [options]
       sudo $(basename "$0") --uninstall

Installs picluster into a virtual environment under /opt/picluster, creates the system user
'picluster', writes /etc/picluster/node.toml and /etc/picluster/node.password, and enables and
starts picluster-node.service. Running it again with the same source and options changes
nothing; with new options it changes only those keys in node.toml (the others, hand edits
included, are kept) and restarts the service.

The broker password is read from --password-file, else from standard input when it is not
a terminal, else prompted. It is stored in /etc/picluster/node.password (root:picluster,
0640) and never appears on a command line. On a re-run the stored password is kept.

With --enroll (what 'cluster-master nodes add NODE' prints), the node id, broker URL and
password come from the master in exchange for the one-time TOKEN (POST /api/enroll): no
password is typed, and none appears on a command line.

Options:
  --enroll URL TOKEN    enroll with the master at URL using a one-time token
  --broker URL          mqtt://[user@]host[:port] or mqtts://... (the user defaults to the
                        node id; it must equal the node id, the ACL requires it)
  --node-id ID          node id (default: from the hostname, lower-cased)
  --password-file FILE  read the broker password from FILE (first line)
  --ca-file FILE        CA certificate of the broker (mqtts://); copied to /etc/picluster
  --interval SECONDS    seconds between metrics (default 10)
  --tags LIST           this node's tags, comma-separated (e.g. rack1,poe): each 1-63 of
                        a-z 0-9 _ . - starting with a letter or digit; --tags "" removes them
  --source DIR|WHEEL    picluster checkout or wheel to install (default: $(dirname "$SCRIPT_DIR"))
  --python PYTHON       Python $MIN_PYTHON+ to build the venv with (default: python3)
  --prefix DIR          install under DIR instead of / (no user, no systemctl; for tests)
  --no-systemd          do not install or start the systemd unit (start the agent yourself,
                        as the picluster user: a run as root leaves a spool it cannot write)
  --uninstall           stop and remove everything this script installed
  -h, --help            show this help
USAGE
}

PREFIX=""
PYTHON=python3
SOURCE="$(dirname "$SCRIPT_DIR")"
USE_SYSTEMD=true
UNINSTALL=false
BROKER=""
NODE_ID=""
PASSWORD_FILE=""
CA_FILE=""
INTERVAL=""
TAGS_GIVEN=false
TAGS=""
ENROLL_URL=""
ENROLL_TOKEN=""
ENROLL_PASSWORD=""
CHANGED=false

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --broker) need_value "$@"; BROKER="$2"; shift 2 ;;
        --enroll)
            [[ $# -ge 3 && -n "$2" && -n "$3" ]] || die "--enroll needs the master's URL and a token"
            ENROLL_URL="${2%/}"; ENROLL_TOKEN="$3"; shift 3 ;;
        --node-id) need_value "$@"; NODE_ID="$2"; shift 2 ;;
        --password-file) need_value "$@"; PASSWORD_FILE="$2"; shift 2 ;;
        --ca-file) need_value "$@"; CA_FILE="$2"; shift 2 ;;
        --interval) need_value "$@"; INTERVAL="$2"; shift 2 ;;
        --tags)
            [[ $# -ge 2 ]] || die "--tags needs a value, e.g. --tags rack1,poe (or \"\" for none)"
            TAGS_GIVEN=true; TAGS="$2"; shift 2 ;;
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
CONFIG="$ETC_DIR/node.toml"
PASSWORD_DEST="$ETC_DIR/node.password"
UNIT="$UNIT_DIR/picluster-node.service"

uninstall() {
    require_root_for_real_system
    local drive_systemd=false
    [[ -n "$SYSTEMCTL" ]] && command -v "$SYSTEMCTL" >/dev/null 2>&1 && drive_systemd=true
    if [[ "$drive_systemd" == true && -f "$UNIT" ]]; then
        "$SYSTEMCTL" disable --now picluster-node.service || warn "could not stop picluster-node"
    fi
    local node_id
    node_id="$(toml_get "$CONFIG" node_id)"
    rm -f "$UNIT" "$CONFIG" "$PASSWORD_DEST" "$ETC_DIR/node-ca.crt"
    if [[ "$drive_systemd" == true ]]; then
        "$SYSTEMCTL" daemon-reload || true
    fi
    if [[ -n "$node_id" ]]; then
        rm -f "$STATE_DIR/spool-$node_id.sqlite3"{,-wal,-shm,-journal}
    fi
    if [[ -f "$ETC_DIR/master.toml" ]]; then
        say "the master is installed here too: keeping $VENV, $STATE_DIR and the user"
    else
        rm -rf "$VENV" "$SRC_DIR" "$STATE_DIR"
        rmdir "$OPT_DIR" "$ETC_DIR" 2>/dev/null || true
        remove_service_user
    fi
    if ! real_system; then
        prune_empty_dirs "$UNIT_DIR" "$OPT_DIR" "$ETC_DIR" "$STATE_DIR"
    fi
    say "picluster-node removed"
}

readonly TAG_RE='^[a-z0-9][a-z0-9_.-]{0,62}$'

# The --tags list as a TOML array (in order, repeats dropped), or die naming the bad tag.
tags_toml() {
    local tag seen=" " items=()
    local -a parts
    IFS=, read -r -a parts <<<"$TAGS"
    for tag in "${parts[@]}"; do
        tag="${tag#"${tag%%[![:space:]]*}"}"
        tag="${tag%"${tag##*[![:space:]]}"}"
        [[ -n "$tag" ]] || continue
        [[ "$tag" =~ $TAG_RE ]] ||
            die "--tags: '$tag' is not a valid tag: 1-63 characters of a-z, 0-9, '_', '.' or '-', starting with a letter or digit"
        [[ "$seen" == *" $tag "* ]] && continue
        seen+="$tag "
        items+=("\"$tag\"")
    done
    local joined
    joined="$(printf '%s, ' "${items[@]}")"
    [[ ${#items[@]} -gt 0 ]] || joined=""
    echo "[${joined%, }]"
}

# The config of a first install.
node_config() {
    local ca_line='# ca_file = "/etc/picluster/ca.crt"'
    [[ -n "$CA_FILE" ]] && ca_line="ca_file = \"$ETC_DIR/node-ca.crt\""
    local tags_line='# tags = ["rack1", "poe"]'
    [[ "$TAGS_GIVEN" == true ]] && tags_line="tags = $(tags_toml)"
    cat <<TOML
# picluster node agent, written by deploy/install-node.sh (re-run it to change these).
# Keys: see deploy/node.toml.example. The password is in password_file, never here.
broker = "$BROKER"
node_id = "$NODE_ID"
password_file = "$PASSWORD_DEST"
$ca_line
interval = ${INTERVAL:-10}
$tags_line
state_dir = "$STATE_DIR"
log_level = "INFO"
TOML
}

# The existing config with the options given on this run applied, every other line kept.
updated_node_config() {
    toml_set node_id "\"$NODE_ID\"" <"$CONFIG" |
        toml_set broker "${BROKER:+\"$BROKER\"}" |
        toml_set interval "$INTERVAL" |
        toml_set tags "$([[ "$TAGS_GIVEN" == false ]] || tags_toml)" |
        toml_set ca_file "${CA_FILE:+\"$ETC_DIR/node-ca.crt\"}"
}

# Check the broker URL and give it the node id as its user when it has none.
normalise_broker() {
    local url_re='^(mqtts?)://(([^@/]*)@)?([^@/:]+|\[[0-9a-fA-F:]+\])(:[0-9]+)?/?$'
    [[ "$BROKER" =~ $url_re ]] ||
        die "--broker '$BROKER' must look like mqtt://[user@]host[:port] or mqtts://..."
    local scheme="${BASH_REMATCH[1]}" user="${BASH_REMATCH[3]}" host="${BASH_REMATCH[4]}" port="${BASH_REMATCH[5]}"
    [[ "$user" != *:* ]] ||
        die "keep the password out of the broker URL: use --password-file or standard input"
    if [[ -z "$user" ]]; then
        user="$NODE_ID"
    elif [[ "$user" != "$NODE_ID" ]]; then
        die "the broker user '$user' must equal the node id '$NODE_ID' (the broker's ACL confines each node to cluster/<its user>/)"
    fi
    BROKER="$scheme://$user@$host$port"
}

# Exchange the one-time token for node id, broker URL and password (POST /api/enroll). The
# password travels from curl to python to this shell's variables: never on a command line.
enroll() {
    [[ "$ENROLL_URL" =~ ^https?://[^[:space:]]+$ ]] || die "--enroll '$ENROLL_URL' must be http://HOST:PORT"
    [[ "$ENROLL_TOKEN" =~ ^[A-Za-z0-9_-]{1,200}$ ]] || die "the enrollment token is not one cluster-master printed"
    [[ -z "$BROKER" && -z "$PASSWORD_FILE" ]] || die "--enroll gives broker and password: leave out --broker and --password-file"
    command -v curl >/dev/null 2>&1 || die "--enroll needs curl"
    local answer status body fields
    answer="$(printf '{"token": "%s"}' "$ENROLL_TOKEN" |
        curl -sS -X POST -H 'Content-Type: application/json' --data-binary @- \
            -w '\n%{http_code}' "$ENROLL_URL/api/enroll")" ||
        die "cannot reach the master at $ENROLL_URL"
    status="${answer##*$'\n'}"
    body="${answer%$'\n'*}"
    [[ "$status" == 200 ]] ||
        die "the master refused the enrollment (HTTP $status): $body; run 'cluster-master nodes add' again for a new command"
    fields="$(printf '%s' "$body" | "$PYTHON" -c '
import json, sys
answer = json.load(sys.stdin)
print(answer["node"]); print(answer["broker"]); print(answer["password"])')" ||
        die "the master's enrollment answer could not be read: $body"
    local enrolled_id
    { read -r enrolled_id; read -r BROKER; read -r ENROLL_PASSWORD; } <<<"$fields"
    [[ -z "$NODE_ID" || "$NODE_ID" == "$enrolled_id" ]] ||
        die "--node-id $NODE_ID differs from the enrolled node id $enrolled_id"
    NODE_ID="$enrolled_id"
    say "enrolled as node '$NODE_ID' (broker $BROKER)"
}

install() {
    require_root_for_real_system
    require_python
    require_systemd
    check_source
    if [[ -n "$ENROLL_URL" ]]; then
        # Checked first: the token works once, so nothing it gives may be wasted on a typo.
        [[ -z "$INTERVAL" || "$INTERVAL" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--interval must be a number of seconds"
        [[ -z "$CA_FILE" || -r "$CA_FILE" ]] || die "cannot read --ca-file $CA_FILE"
        tags_toml >/dev/null
        enroll
    fi
    local installed_id
    installed_id="$(toml_get "$CONFIG" node_id)"
    [[ -n "$NODE_ID" ]] || NODE_ID="${installed_id:-$(node_id_from_hostname)}"
    valid_node_id "$NODE_ID" ||
        die "node id '$NODE_ID' is not valid: lower-case letters, digits, '_' and '-', at most 63 (use --node-id)"
    [[ "$NODE_ID" != picluster-master && "$NODE_ID" != homeassistant ]] ||
        die "'$NODE_ID' is a broker user of its own: choose another node id"
    [[ -z "$INTERVAL" || "$INTERVAL" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--interval must be a number of seconds"
    [[ -z "$CA_FILE" || -r "$CA_FILE" ]] || die "cannot read --ca-file $CA_FILE"
    tags_toml >/dev/null

    if [[ -z "$BROKER" && ! -f "$CONFIG" ]]; then
        if [[ -t 0 ]]; then
            read -r -p "Broker address (e.g. mqtt://head.local): " BROKER
        fi
        [[ -n "$BROKER" ]] || die "no broker: give --broker mqtt://HEAD (see --help)"
    fi

    # A new node id is a new broker user (the URL's user) with a password of its own.
    local new_id=false
    if [[ -n "$installed_id" && "$NODE_ID" != "$installed_id" ]]; then
        new_id=true
        if [[ -z "$BROKER" ]]; then
            BROKER="$(toml_get "$CONFIG" broker)"
            BROKER="${BROKER/:\/\/$installed_id@/://}"
        fi
    fi

    # Everything is checked and asked for before anything is changed.
    [[ -n "$BROKER" ]] && normalise_broker
    local password=""
    if [[ -n "$ENROLL_PASSWORD" ]]; then
        password="$ENROLL_PASSWORD"
    elif [[ -n "$PASSWORD_FILE" || ! -f "$PASSWORD_DEST" || "$new_id" == true ]]; then
        password="$(read_password "$PASSWORD_FILE" "$NODE_ID")"
    fi

    ensure_service_user
    install_venv ""
    ensure_state_dir
    if [[ -n "$password" ]]; then
        printf '%s\n' "$password" | put_file "$PASSWORD_DEST" 0640
    fi
    if [[ -n "$CA_FILE" ]]; then
        put_file "$ETC_DIR/node-ca.crt" 0644 <"$CA_FILE"
    fi
    if [[ -f "$CONFIG" ]]; then
        updated_node_config | put_file "$CONFIG" 0640
    else
        node_config | put_file "$CONFIG" 0640
    fi
    # Everything above is read by the agent: a change needs a restart to take effect.
    local agent_changed=$CHANGED

    if [[ "$USE_SYSTEMD" == true ]]; then
        CHANGED=false
        unit_text "$SCRIPT_DIR/picluster-node.service" | put_file "$UNIT" 0644
        local unit_changed=$CHANGED
        if manages_services; then
            [[ "$unit_changed" == true ]] && "$SYSTEMCTL" daemon-reload
            if [[ "$agent_changed" == true || "$unit_changed" == true ]]; then
                apply_service picluster-node.service restart
            else
                apply_service picluster-node.service none
            fi
            [[ "$VENV_CHANGED" == true ]] &&
                restart_sibling_if_running "$ETC_DIR/master.toml" picluster-master.service
            say "picluster-node is running: journalctl -u picluster-node -f"
        fi
    else
        say "no systemd unit: start it as the picluster user, e.g."
        say "  sudo -u $SERVICE_USER $VENV/bin/cluster-node run --config $CONFIG"
    fi
    say "done: node '$NODE_ID' -> $(toml_get "$CONFIG" broker)"
}

if [[ "$UNINSTALL" == true ]]; then
    uninstall
else
    install
fi
