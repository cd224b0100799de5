"""`cluster-master users ...`: dashboard and API users, run on the head against the database.

It writes the master's database directly (not through the API), so the first admin can be
made before anyone can log in; the running master sees each change at the next request.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cluster_protocol import setting_rules as rules
from cluster_protocol.config import SettingsError, read_secret_file
from master_service.auth.accounts import AccountError, Accounts, Role
from master_service.auth.passwords import PasswordError, check_new_password
from master_service.cli_output import complainer, out
from master_service.settings import default_db_path
from master_service.storage.database import Database, DatabaseUnavailableError, Engine, engine_of
from master_service.storage.store import connect

INSTALLED_CONFIG: Final = Path("/etc/picluster/master.toml")
_err = complainer("cluster-master users")


def add_parser(commands: Any) -> None:
    """Add `users` and its subcommands to the `cluster-master` parser."""
    users = commands.add_parser("users", help="dashboard and API logins: users, roles, tokens")
    actions = users.add_subparsers(dest="users_command", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=text)
        parser.add_argument(
            "--db", help="the master's database (default: the config's db, else the default)"
        )
        parser.add_argument(
            "--config", help=f"the master's TOML config, for its db (default {INSTALLED_CONFIG})"
        )
        return parser

    add = action("add", "add a user; asks for the password")
    add.add_argument("name", help="user name")
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (scripts)"
    )
    passwd = action("passwd", "change a user's password (ends their sessions)")
    passwd.add_argument("name", help="user name")
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    role = action("role", "change a user's role")
    role.add_argument("name", help="user name")
    role.add_argument("role", choices=[r.value for r in Role])
    action("list", "list users and their API tokens (never the tokens themselves)")
    remove = action("remove", "delete a user with their sessions and API tokens")
    remove.add_argument("name", help="user name")
    token = action("token", "create an API token for a user (printed once)")
    token.add_argument("name", help="user name")
    token.add_argument("--label", default="", help="what the token is for, e.g. 'backup script'")
    revoke = action("revoke", "delete an API token by its id (from `users list`)")
    revoke.add_argument("token_id", type=int, help="token id")


def database_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The database: --db, CLUSTER_DB, the config file's `db`, else the master's default."""
    if args.db:
        return _checked(str(args.db))
    if environ.get("CLUSTER_DB"):
        return _checked(environ["CLUSTER_DB"])
    config = args.config or environ.get("CLUSTER_CONFIG")
    path = Path(config) if config else INSTALLED_CONFIG
    if config or path.is_file():
        with path.open("rb") as file:
            db = tomllib.load(file).get("db")
        if isinstance(db, str) and db:
            return _checked(db)
    return default_db_path()


def database_password(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """PostgreSQL's password as the master reads it: CLUSTER_DB_PASSWORD, or db_password_file.

    None leaves it to libpq (PGPASSWORD, ~/.pgpass).
    """
    if environ.get("CLUSTER_DB_PASSWORD"):
        return environ["CLUSTER_DB_PASSWORD"]
    secret_file = environ.get("CLUSTER_DB_PASSWORD_FILE")
    config = args.config or environ.get("CLUSTER_CONFIG")
    path = Path(config) if config else INSTALLED_CONFIG
    if not secret_file and (config or path.is_file()):
        with path.open("rb") as file:
            found = tomllib.load(file).get("db_password_file")
        secret_file = found if isinstance(found, str) and found else None
    return read_secret_file("db_password_file", secret_file) if secret_file else None


def _checked(db: str) -> str:
    """`db` if it can be a SQLite file's path or a PostgreSQL URL; else SettingsError."""
    problem = rules.database(db)
    if problem is not None:
        raise SettingsError("db", problem)
    return db


def read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at a prompt that does not echo."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise PasswordError("the two passwords differ")
    check_new_password(password)
    return password


def become_the_owner(db: str) -> None:
    """Run as root on a head, become the user owning the database's directory first.

    The master runs as `picluster` and owns those files; root writing them could leave
    files it cannot open, and could follow a link the master's user planted (say
    `master.db-wal` -> /etc/shadow). So root never touches them at all.
    """
    directory = Path(db).parent
    if engine_of(db) is not Engine.SQLITE or os.geteuid() != 0 or not directory.is_dir():
        return
    owner = directory.stat()
    if owner.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _run(accounts: Accounts, args: argparse.Namespace) -> int:
    command = args.users_command
    if command == "add":
        user = accounts.add_user(args.name, Role(args.role), read_password(args.password_stdin))
        out(f"added {user.name} ({user.role.value})")
    elif command == "passwd":
        accounts.set_password(args.name, read_password(args.password_stdin))
        out(f"changed the password of {args.name}; their sessions ended")
    elif command == "role":
        accounts.set_role(args.name, Role(args.role))
        out(f"{args.name} is now {args.role}")
    elif command == "remove":
        if not accounts.remove_user(args.name):
            _err(f"no user {args.name!r}")
            return 1
        out(f"removed {args.name} with their sessions and API tokens")
    elif command == "token":
        token_id, token = accounts.create_token(args.name, args.label)
        out(token)
        _err(f"token {token_id} for {args.name}: shown this once; send it as 'Bearer <token>'")
    elif command == "revoke":
        if not accounts.revoke_token(args.token_id):
            _err(f"no API token {args.token_id}")
            return 1
        out(f"revoked API token {args.token_id}")
    else:
        tokens: dict[str, list[str]] = {}
        for info in accounts.tokens():
            label = f" {info.label!r}" if info.label else ""
            tokens.setdefault(info.user, []).append(f"#{info.id}{label}")
        out(f"{'USER':<24} {'ROLE':<7} {'CREATED':<16} API TOKENS")
        for user in accounts.users():
            listed = ", ".join(tokens.get(user.name, [])) or "-"
            out(f"{user.name:<24} {user.role.value:<7} {_when(user.created):<16} {listed}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one `users` subcommand: 0 done, 1 nothing to remove, 2 refused, 3 bad database."""
    try:
        db = database_path(args, os.environ)
        database = Database(db, database_password(args, os.environ))
    except (OSError, tomllib.TOMLDecodeError) as error:
        _err(f"cannot read the config: {error}")
        return 3
    except SettingsError as error:
        _err(f"bad setting {error}")
        return 3
    try:
        become_the_owner(db)
        connection = connect(database)
    except SettingsError as error:  # a newer schema, a server that refuses the login
        _err(f"bad setting {error}")
        return 3
    except DatabaseUnavailableError as error:
        _err(str(error))
        return 3
    except Exception as error:
        _err(f"cannot open the database {database.name}: {error}")
        return 3
    try:
        return _run(Accounts(lambda: connection), args)
    except (AccountError, PasswordError) as error:
        _err(str(error))
        return 2
    except EOFError:
        _err("no password given")
        return 2
    finally:
        connection.close()
