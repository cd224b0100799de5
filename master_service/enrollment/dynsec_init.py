"""Write the dynamic security plugin's first JSON: the master as admin, with its topic rights.

`mosquitto_ctrl dynsec init FILE USER` makes only the admin; this also gives the master's user
the rights of the static ACL (mosquitto/acl) as role `picluster-master`, and, when a password
is given for it, Home Assistant's user its role, so the broker works at its first start.
Passwords are read from files or standard input, never from the command line; an existing
file is left alone (the broker owns it after the first start).

    python -m master_service.enrollment.dynsec_init FILE --password-file PASSWORD_FILE
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

ITERATIONS: Final = 101  # what mosquitto_ctrl and the plugin write
SALT_BYTES: Final = 12
HASH_BYTES: Final = 64
MASTER_USER: Final = "picluster-master"
HA_USER: Final = "homeassistant"


def hashed(password: str) -> dict[str, Any]:
    """The plugin's password fields: PBKDF2-HMAC-SHA512 with a 12-byte salt, base64."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, HASH_BYTES)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
    }


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def admin_role() -> dict[str, Any]:
    """The plugin's own admin role, as `mosquitto_ctrl dynsec init` writes it."""
    topic = "$CONTROL/dynamic-security/#"
    return {
        "rolename": "admin",
        "acls": [
            _acl("publishClientSend", topic),
            _acl("publishClientReceive", topic),
            _acl("subscribePattern", topic),
            _acl("publishClientReceive", "$SYS/#"),
            _acl("subscribePattern", "$SYS/#"),
            _acl("publishClientReceive", "#"),
            _acl("subscribePattern", "#"),
            _acl("unsubscribePattern", "#"),
        ],
    }


def master_role(prefix: str, ha_prefix: str) -> dict[str, Any]:
    """The master's rights (mosquitto/acl's `user picluster-master`)."""
    return {
        "rolename": "picluster-master",
        "acls": [
            _acl("subscribePattern", f"{prefix}/#"),
            _acl("subscribePattern", f"{ha_prefix}/status"),
            _acl("publishClientSend", f"{prefix}/_master/#"),
            _acl("publishClientSend", f"{prefix}/+/cmd/#"),
            # A removed node's retained status and details, cleared (empty retained messages).
            _acl("publishClientSend", f"{prefix}/+/status"),
            _acl("publishClientSend", f"{prefix}/+/machine_details"),
            _acl("publishClientSend", f"{ha_prefix}/#"),
        ],
    }


def ha_role(prefix: str, ha_prefix: str) -> dict[str, Any]:
    """Home Assistant's rights (mosquitto/acl's `user homeassistant`)."""
    return {
        "rolename": "homeassistant",
        "acls": [
            _acl("subscribePattern", f"{prefix}/#"),
            _acl("subscribePattern", f"{ha_prefix}/#"),
            _acl("publishClientSend", f"{ha_prefix}/status"),
            _acl("publishClientSend", f"{prefix}/_master/ha_command"),
        ],
    }


def initial_config(
    master_password: str,
    ha_password: str | None = None,
    prefix: str = "cluster",
    ha_prefix: str = "homeassistant",
) -> dict[str, Any]:
    """The whole first JSON."""
    clients: list[dict[str, Any]] = [
        {
            "username": MASTER_USER,
            "textName": "picluster master (dynamic security admin)",
            **hashed(master_password),
            "roles": [{"rolename": "admin"}, {"rolename": "picluster-master"}],
        }
    ]
    roles = [admin_role(), master_role(prefix, ha_prefix)]
    if ha_password is not None:
        clients.append(
            {
                "username": HA_USER,
                "textName": "Home Assistant",
                **hashed(ha_password),
                "roles": [{"rolename": "homeassistant"}],
            }
        )
        roles.append(ha_role(prefix, ha_prefix))
    return {
        "clients": clients,
        "roles": roles,
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def _first_line(path: str) -> str:
    text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    line = text.splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise SystemExit(f"dynsec_init: no password in {'standard input' if path == '-' else path}")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Write FILE unless it exists; exit 0 either way, 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m master_service.enrollment.dynsec_init")
    parser.add_argument("file", help="the plugin's JSON (plugin_opt_config_file)")
    parser.add_argument(
        "--password-file", default="-", help="the master's broker password (default: stdin)"
    )
    parser.add_argument("--ha-password-file", help="also create Home Assistant's user")
    parser.add_argument("--prefix", default="cluster", help="topic prefix (default cluster)")
    parser.add_argument("--owner", help="user that owns the file (the broker's, e.g. mosquitto)")
    args = parser.parse_args(argv)
    target = Path(args.file)
    if target.exists():
        sys.stdout.write(f"{target} exists: left as it is\n")
        return 0
    ha = _first_line(args.ha_password_file) if args.ha_password_file else None
    document = initial_config(_first_line(args.password_file), ha, args.prefix)
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=1)
    if args.owner:
        shutil.chown(partial, args.owner, args.owner)
    partial.replace(target)
    sys.stdout.write(f"wrote {target}: {MASTER_USER} is the dynamic security admin\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
