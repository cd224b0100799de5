# shellcheck shell=bash
# Variables set here (paths, CHANGED) are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by deploy/install-node.sh and deploy/install-head.sh (sourced, not run).
# Callers set: PREFIX ("" for the real system), PYTHON, SOURCE, USE_SYSTEMD (true/false).

readonly SERVICE_USER=picluster
readonly NODE_ID_RE='^[a-z0-9][a-z0-9_-]{0,62}$'
readonly MIN_PYTHON="3.11"
# The paths a picluster source tree needs to build; everything else (tests, .git) is left out.
readonly SOURCE_PATHS=(pyproject.toml README.md cluster_protocol node_publisher master_service)

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
    MARKER="$VENV/.picluster-installed"
}

# The real system (root, accounts, systemctl) or a throwaway prefix (none of those).
real_system() { [[ -z "$PREFIX" ]]; }

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
    [[ "$USE_SYSTEMD" == true ]] || return 0
    command -v systemctl >/dev/null 2>&1 ||
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

# A fingerprint of what would be installed, so a re-run with the same source does nothing.
source_fingerprint() {
    if [[ -f "$SOURCE" ]]; then
        sha256sum "$SOURCE" | cut -d' ' -f1
        return
    fi
    local present=() path
    for path in "${SOURCE_PATHS[@]}"; do
        [[ -e "$SOURCE/$path" ]] && present+=("$path")
    done
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
# Sets CHANGED=true when it installed something.
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
    if [[ -f "$SOURCE" ]]; then
        target="$SOURCE"
    else
        # Build from a copy: the checkout may be read-only, and pip builds in the tree.
        stage="$(mktemp -d)"
        STAGE_DIRS+=("$stage")
        local present=() path
        for path in "${SOURCE_PATHS[@]}"; do
            [[ -e "$SOURCE/$path" ]] && present+=("$path")
        done
        tar -C "$SOURCE" --exclude=__pycache__ -cf - "${present[@]}" | tar -C "$stage" -xf -
        target="$stage"
    fi
    [[ -n "$extras" ]] && target="${target}[$extras]"
    say "installing picluster${extras:+[$extras]} into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$target" ||
        die "pip could not install picluster from $SOURCE (see above)"
    echo "$wanted" >"$MARKER"
    CHANGED=true
}

STAGE_DIRS=()
cleanup_stage() {
    local dir
    for dir in "${STAGE_DIRS[@]}"; do
        rm -rf "$dir"
    done
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
