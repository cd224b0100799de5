# shellcheck shell=bash
# Variables set here (paths, CHANGED) are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by deploy/install-node.sh and deploy/install-head.sh (sourced, not run).
# Callers set: PREFIX ("" for the real system), PYTHON, SOURCE, USE_SYSTEMD (true/false).

# `producer | put_file ...` must set CHANGED in this shell, not in a pipeline's subshell where
# it would be lost (and the service never restarted). Scripts run without job control, so the
# last command of a pipeline runs here; pipefail still reports a failing producer.
shopt -s lastpipe

readonly SERVICE_USER=picluster
readonly NODE_ID_RE='^[a-z0-9][a-z0-9_-]{0,62}$'
readonly MIN_PYTHON="3.11"
# The paths a picluster source tree needs to build; everything else (tests, .git) is left out.
readonly SOURCE_PATHS=(pyproject.toml README.md cluster_protocol node_publisher master_service)
# The node's installer files kept beside the source: the master serves both to new nodes
# (/install/picluster.tar.gz, master_service/enrollment/installer.py).
readonly DEPLOY_PATHS=(deploy/install-node.sh deploy/installer-lib.sh deploy/picluster-node.service
    deploy/node.toml.example)

say() { echo "==> $*"; }
warn() { echo "warning: $*" >&2; }
die() {
    echo "error: $*" >&2
    exit 1
}

# Paths, all under PREFIX so that tests can install into a temporary directory.
set_paths() {
    OPT_DIR="$PREFIX/opt/picluster"
    VENV="$OPT_DIR/venv"
    ETC_DIR="$PREFIX/etc/picluster"
    STATE_DIR="$PREFIX/var/lib/picluster"
    UNIT_DIR="$PREFIX/etc/systemd/system"
    SRC_DIR="$OPT_DIR/src"
    MARKER="$VENV/.picluster-installed"
}

# The real system (root, accounts, systemctl) or a throwaway prefix (none of those).
real_system() { [[ -z "$PREFIX" ]]; }

# The systemctl to drive: the real one on the real system. A --prefix install drives none,
# unless PICLUSTER_SYSTEMCTL names one (the tests' stand-in that records its calls).
set_systemctl() {
    SYSTEMCTL="${PICLUSTER_SYSTEMCTL:-}"
    if [[ -z "$SYSTEMCTL" ]] && real_system; then
        SYSTEMCTL=systemctl
    fi
}

# True when this run installs units and tells systemd about them.
manages_services() { [[ "$USE_SYSTEMD" == true && -n "$SYSTEMCTL" ]]; }

# Make UNIT run what was just installed. HOW is "restart" (something it reads changed),
# "reload" (only files it re-reads on SIGHUP changed) or "none". With "none" nothing happens
# unless the unit is disabled or stopped: an unchanged re-run changes nothing.
# Call "$SYSTEMCTL" daemon-reload first when a unit file changed.
apply_service() {
    local unit="$1" how="$2"
    if ! "$SYSTEMCTL" is-enabled --quiet "$unit"; then
        "$SYSTEMCTL" enable "$unit"
    fi
    case "$how" in
        restart)
            say "restarting $unit"
            "$SYSTEMCTL" restart "$unit"
            ;;
        reload)
            say "reloading $unit"
            "$SYSTEMCTL" reload-or-restart "$unit"
            ;;
        *)
            if ! "$SYSTEMCTL" is-active --quiet "$unit"; then
                "$SYSTEMCTL" start "$unit"
            fi
            ;;
    esac
}

# After the shared venv changed, restart the other picluster service if it runs here (it
# runs the same code; try-restart leaves a stopped unit alone).
restart_sibling_if_running() {
    local config="$1" unit="$2"
    if [[ -f "$config" ]]; then
        "$SYSTEMCTL" try-restart "$unit"
    fi
}

require_root_for_real_system() {
    if real_system && [[ $EUID -ne 0 ]]; then
        die "installing into the system needs root: run it with sudo (or use --prefix DIR)"
    fi
}

require_python() {
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "$PYTHON not found: install Python $MIN_PYTHON or newer (sudo apt-get install python3 python3-venv)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$PYTHON" -V 2>&1) is too old: picluster needs Python $MIN_PYTHON or newer"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "Python's venv module is missing: sudo apt-get install python3-venv"
}

require_systemd() {
    manages_services || return 0
    command -v "$SYSTEMCTL" >/dev/null 2>&1 ||
        die "systemctl not found: this machine does not use systemd (use --no-systemd and start the service yourself)"
    if real_system && [[ ! -d /run/systemd/system ]]; then
        die "systemd is not running here (no /run/systemd/system): use --no-systemd"
    fi
}

valid_node_id() { [[ "$1" =~ $NODE_ID_RE ]]; }

# hostname -> node id, the rule of cluster_protocol.node_id_from_hostname.
node_id_from_hostname() {
    local id
    id="$(hostname | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9_\n-' '-' | sed 's/^[-_]*//')"
    echo "${id:0:63}"
}

# The SOURCE_PATHS and DEPLOY_PATHS that exist in the source directory, one a line.
present_source_paths() {
    local path
    for path in "${SOURCE_PATHS[@]}" "${DEPLOY_PATHS[@]}"; do
        [[ -e "$SOURCE/$path" ]] && echo "$path"
    done
    return 0
}

# A fingerprint of what would be installed, so a re-run with the same source does nothing.
source_fingerprint() {
    if [[ -f "$SOURCE" ]]; then
        sha256sum "$SOURCE" | cut -d' ' -f1
        return
    fi
    local present=()
    mapfile -t present < <(present_source_paths)
    (cd "$SOURCE" && find "${present[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

check_source() {
    if [[ -f "$SOURCE" ]]; then
        [[ "$(basename "$SOURCE")" == picluster-*.whl ]] ||
            die "--source $SOURCE is neither a picluster checkout nor a picluster-*.whl wheel"
    elif [[ -d "$SOURCE" ]]; then
        grep -q '^name = "picluster"' "$SOURCE/pyproject.toml" 2>/dev/null ||
            die "--source $SOURCE is not a picluster checkout (no pyproject.toml naming picluster)"
    else
        die "--source $SOURCE does not exist"
    fi
}

# Create the venv and install picluster (with EXTRAS) unless the same source is there already.
# Sets CHANGED=true and VENV_CHANGED=true when it installed something.
install_venv() {
    local extras="$1" fingerprint wanted stage target
    fingerprint="$(source_fingerprint)"
    wanted="$fingerprint ${extras:-base}"
    if [[ -x "$VENV/bin/python" && -f "$MARKER" ]]; then
        local have
        have="$(cat "$MARKER")"
        # A venv with the master extra serves a node too.
        if [[ "$have" == "$wanted" || ("$extras" == "" && "$have" == "$fingerprint "*) ]]; then
            say "picluster in $VENV is up to date"
            return 0
        fi
    fi
    mkdir -p "$OPT_DIR"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating the virtual environment $VENV"
        "$PYTHON" -m venv "$VENV" || die "could not create the virtual environment $VENV"
    fi
    local editable=()
    if [[ -f "$SOURCE" ]]; then
        target="$SOURCE"
        rm -rf "$SRC_DIR"
    else
        # A copy of the source stays in SRC_DIR, installed editable, so that the master runs
        # from a tree it can serve to new nodes (the checkout itself may be read-only or go
        # away, and pip builds in the tree).
        stage="$SRC_DIR.picluster-new"
        rm -rf "$stage"
        mkdir -p "$stage"
        local present=()
        mapfile -t present < <(present_source_paths)
        # Owned by root and readable by the services, whatever the checkout's owner and modes.
        tar -C "$SOURCE" --exclude=__pycache__ -cf - "${present[@]}" |
            tar -C "$stage" --no-same-owner -xf -
        chmod -R u+rwX,go+rX,go-w "$stage"
        rm -rf "$SRC_DIR"
        mv "$stage" "$SRC_DIR"
        target="$SRC_DIR"
        editable=(--editable)
    fi
    [[ -n "$extras" ]] && target="${target}[$extras]"
    say "installing picluster${extras:+[$extras]} into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        "${editable[@]}" "$target" ||
        die "pip could not install picluster from $SOURCE (see above)"
    echo "$wanted" >"$MARKER"
    CHANGED=true
    VENV_CHANGED=true
}

VENV_CHANGED=false
# A copy of the source left half made by a failed run.
cleanup_stage() {
    [[ -z "${SRC_DIR:-}" ]] || rm -rf "$SRC_DIR.picluster-new"
}
trap cleanup_stage EXIT

# Install CONTENT (stdin) at DEST with MODE unless it is already there; CHANGED=true if written.
# Files are root:picluster on the real system, so the service can read them and not change them.
put_file() {
    local dest="$1" mode="$2" tmp
    # Compare in a temporary file elsewhere: an unchanged file leaves even its directory untouched.
    tmp="$(mktemp)"
    cat >"$tmp"
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    cp "$tmp" "$dest.picluster-new"
    rm -f "$tmp"
    chmod "$mode" "$dest.picluster-new"
    if real_system && getent group "$SERVICE_USER" >/dev/null; then
        chgrp "$SERVICE_USER" "$dest.picluster-new"
    fi
    mv -f "$dest.picluster-new" "$dest"
    say "wrote $dest"
    CHANGED=true
}

# A unit file with its paths moved under PREFIX (unchanged on the real system).
unit_text() {
    sed -e "s#/opt/picluster/#$PREFIX/opt/picluster/#g" -e "s#/etc/picluster/#$PREFIX/etc/picluster/#g" "$1"
}

ensure_service_user() {
    real_system || return 0
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "creating the system user $SERVICE_USER"
        useradd --system --user-group --home-dir /var/lib/picluster --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

ensure_state_dir() {
    mkdir -p "$STATE_DIR"
    if real_system; then
        chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
        chmod 0750 "$STATE_DIR"
        # A run as root (e.g. with --no-systemd) leaves files the service can read but not
        # write, and the agent then refuses to start: give them back (CHANGED restarts it).
        local stray
        while IFS= read -r -d '' stray; do
            say "giving $stray back to $SERVICE_USER (it belonged to another user)"
            chown "$SERVICE_USER:$SERVICE_USER" "$stray"
            CHANGED=true
        done < <(find "$STATE_DIR" -mindepth 1 ! -user "$SERVICE_USER" -print0)
    fi
}

remove_service_user() {
    real_system || return 0
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "removing the system user $SERVICE_USER"
        userdel "$SERVICE_USER" || warn "could not remove the user $SERVICE_USER"
    fi
}

# After an uninstall from a prefix, remove the directories we made there if they are empty.
prune_empty_dirs() {
    local dir
    for dir in "$@"; do
        while [[ "$dir" != "$PREFIX" && "$dir" == "$PREFIX"/* ]]; do
            if [[ -d "$dir" ]]; then
                rmdir "$dir" 2>/dev/null || break
            fi
            dir="$(dirname "$dir")"
        done
    done
}

# The value of the top-level KEY in the TOML file FILE (quotes removed); empty when absent.
toml_get() {
    local file="$1" key="$2"
    [[ -f "$file" ]] || return 0
    awk -v key="$key" '
        /^[[:space:]]*\[/ { exit }
        $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub("^[^=]*=[[:space:]]*", ""); sub("[[:space:]]+#.*$", ""); gsub("^\"|\"$", "")
            print; exit
        }' "$file"
}

# The TOML text on stdin with the top-level KEY set to VALUE (a TOML literal, e.g. "\"x\"" or
# 5), on stdout. The key's line is replaced where it is, else a commented-out "# KEY = ..."
# line, else the line goes after the last top-level one; all other lines are kept as they are,
# so what an admin added by hand survives a re-run. An empty VALUE leaves the text as it is.
toml_set() {
    if [[ -z "$2" ]]; then
        cat
        return
    fi
    TOML_KEY="$1" TOML_LINE="$1 = $2" awk '
        { lines[NR] = $0 }
        !table && /^[[:space:]]*\[/ { table = NR }
        !table && !active && $0 ~ "^[[:space:]]*" ENVIRON["TOML_KEY"] "[[:space:]]*=" { active = NR }
        !table && !commented && $0 ~ "^[[:space:]]*#[[:space:]]*" ENVIRON["TOML_KEY"] "[[:space:]]*=" {
            commented = NR
        }
        !table && $0 !~ /^[[:space:]]*$/ { last = NR }
        END {
            target = active ? active : commented
            if (!target && !last) print ENVIRON["TOML_LINE"]
            for (i = 1; i <= NR; i++) {
                print (i == target ? ENVIRON["TOML_LINE"] : lines[i])
                if (!target && i == last) print ENVIRON["TOML_LINE"]
            }
        }'
}

# Read a password: the first line of FILE, else stdin when it is not a terminal, else a prompt.
read_password() {
    local from_file="$1" label="$2" password again
    if [[ -n "$from_file" ]]; then
        [[ -r "$from_file" ]] || die "cannot read the password file $from_file"
        IFS= read -r password <"$from_file" || [[ -n "$password" ]] || die "$from_file is empty"
    elif [[ -t 0 ]]; then
        read -r -s -p "Broker password for $label: " password
        echo >&2
        read -r -s -p "Again: " again
        echo >&2
        [[ "$password" == "$again" ]] || die "the passwords do not match"
    else
        IFS= read -r password || [[ -n "$password" ]] ||
            die "no password: give --password-file FILE, or pipe it on standard input"
    fi
    [[ -n "$password" ]] || die "the password for $label is empty"
    printf '%s\n' "$password"
}
