#!/usr/bin/env bash
# Add a broker user, or change its password, in Mosquitto's password file.
set -euo pipefail

readonly NODE_ID_RE='^[a-z0-9][a-z0-9_-]{0,62}$'
readonly FIXED_USERS=("picluster-master" "homeassistant")
password_file=/etc/mosquitto/passwd

usage() {
    cat <<USAGE
Usage: $(basename "$0") NAME [--password-file FILE]

Add the broker user NAME to Mosquitto's password file, or change its password.
NAME is picluster-master (the master), homeassistant (Home Assistant), or a node id
(lower-case letters, digits, '_' and '-', starting with a letter or digit, at most 63).

The password is read from standard input when it is not a terminal (first line),
otherwise prompted twice. It is never taken as an argument, so it stays out of 'ps'
and the shell history.

  --password-file FILE   password file to update (default: /etc/mosquitto/passwd)
  -h, --help             show this help

Example:  sudo $(basename "$0") pi-01
          head -c 18 /dev/urandom | base64 | tee pi-01.password | $(basename "$0") pi-01
USAGE
}

die() {
    echo "add-user.sh: $*" >&2
    exit 1
}

is_fixed_user() {
    local candidate
    for candidate in "${FIXED_USERS[@]}"; do
        [[ "$1" == "$candidate" ]] && return 0
    done
    return 1
}

name=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --password-file)
            [[ $# -ge 2 ]] || die "--password-file needs a file name"
            password_file="$2"
            shift 2
            ;;
        --password-file=*)
            password_file="${1#*=}"
            shift
            ;;
        -*)
            die "unknown option $1 (see --help)"
            ;;
        *)
            [[ -z "$name" ]] || die "only one NAME at a time (got '$name' and '$1')"
            name="$1"
            shift
            ;;
    esac
done

[[ -n "$name" ]] || {
    usage >&2
    exit 2
}
if ! is_fixed_user "$name" && ! [[ "$name" =~ $NODE_ID_RE ]]; then
    die "'$name' is not a valid node id: use lower-case letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters (or picluster-master / homeassistant)"
fi
command -v mosquitto_passwd >/dev/null ||
    die "mosquitto_passwd not found: install Mosquitto first (sudo apt-get install mosquitto)"
[[ -d "$(dirname "$password_file")" ]] || die "directory of $password_file does not exist"

if [[ -t 0 ]]; then
    read -r -s -p "Password for $name: " password
    echo >&2
    read -r -s -p "Again: " again
    echo >&2
    [[ "$password" == "$again" ]] || die "the passwords do not match"
else
    IFS= read -r password || [[ -n "$password" ]] || die "no password on standard input"
fi
[[ -n "$password" ]] || die "the password is empty"
[[ "$password" != *:* ]] || die "the password must not contain ':'"

created=false
if [[ ! -e "$password_file" ]]; then
    (umask 077 && : >"$password_file")
    created=true
fi
# mosquitto_passwd reads the password twice from stdin when it is not a terminal; printf is a
# shell builtin, so the password never appears in a process's arguments.
if ! printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$password_file" "$name" >/dev/null; then
    die "mosquitto_passwd could not update $password_file"
fi
if [[ "$created" == true ]]; then
    # Mosquitto reads this file after dropping to its own user: let its group read it.
    if [[ $EUID -eq 0 ]] && getent group mosquitto >/dev/null; then
        chgrp mosquitto "$password_file"
        chmod 0640 "$password_file"
    else
        chmod 0600 "$password_file"
    fi
fi

echo "User '$name' saved in $password_file."
echo "Make Mosquitto reload it: sudo systemctl reload mosquitto"
echo "  (with docker compose: docker compose restart mosquitto)"
