"""Users, their sessions and their API tokens, in the master's database (schema version 6).

Of a session or a token only its SHA-256 is stored, so a copy of the database lets nobody in.
Every lookup reads the database, so removing a user or a token takes effect at once, also
when `cluster-master users` changed it from another process.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from master_service.auth.passwords import (
    check_new_password,
    dummy_verify,
    hash_password,
    verify_password,
)
from master_service.storage.database import Connection, insert_returning_id, integrity_errors

SESSION_TTL_S: Final = 30 * 86400.0
USER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(StrEnum):
    """What a user may do: `viewer` reads; `admin` also commands, enrolls, silences."""

    VIEWER = "viewer"
    ADMIN = "admin"


Via = Literal["session", "token", "api_token", "local"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, with which role, and how they proved it."""

    name: str
    role: Role
    via: Via

    @property
    def is_admin(self) -> bool:
        """True for the admin role."""
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class User:
    """A user as listed (never with the password hash)."""

    name: str
    role: Role
    created: float


@dataclass(frozen=True, slots=True)
class Session:
    """A session as handed out at login: the secret exists only here and in the cookie."""

    secret: str
    csrf: str
    expires: float
    principal: Principal


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """A session found by its cookie: who, and the CSRF token its writes must carry."""

    principal: Principal
    csrf: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as listed: never the token itself."""

    id: int
    user: str
    label: str
    created: float


class AccountError(ValueError):
    """A user name refused, a user unknown or already there: the message says which."""


def secret_hash(secret: str) -> str:
    """The stored form of a session or token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_user_name(name: str) -> str:
    """The name if it is a valid user name, else AccountError naming the rule."""
    if not USER_NAME.fullmatch(name):
        raise AccountError(
            f"{name!r} is not a user name: 1 to 64 of letters, digits, '.', '_', '@', '-',"
            " starting with a letter or digit"
        )
    return name


class Accounts:
    """Users, sessions and tokens over one SQLite file; safe to use from many threads."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        clock: Callable[[], float] = time.time,
        session_ttl_s: float = SESSION_TTL_S,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._session_ttl_s = session_ttl_s
        self._local = threading.local()

    @property
    def session_ttl_s(self) -> float:
        """How long a session lasts after its login."""
        return self._session_ttl_s

    def _db(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, role: Role, password: str) -> User:
        """Create a user; AccountError if the name is taken or refused."""
        check_user_name(name)
        check_new_password(password)
        now = self._clock()
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO users (name, role, password, created) VALUES (?, ?, ?, ?)",
                    (name, role.value, hash_password(password), now),
                )
        except integrity_errors() as error:
            raise AccountError(f"a user {name!r} exists already") from error
        return User(name, role, now)

    def set_password(self, name: str, password: str) -> None:
        """Change a user's password and end their sessions (tokens stay)."""
        check_new_password(password)
        with self._db() as db:
            changed = db.execute(
                "UPDATE users SET password = ? WHERE name = ?", (hash_password(password), name)
            ).rowcount
            if not changed:
                raise AccountError(f"no user {name!r}")
            db.execute('DELETE FROM user_sessions WHERE "user" = ?', (name,))

    def set_role(self, name: str, role: Role) -> None:
        """Change a user's role; their sessions and tokens follow at their next request."""
        with self._db() as db:
            sql = "UPDATE users SET role = ? WHERE name = ?"
            if not db.execute(sql, (role.value, name)).rowcount:
                raise AccountError(f"no user {name!r}")

    def remove_user(self, name: str) -> bool:
        """Delete a user with their sessions and tokens; False if there was none."""
        with self._db() as db:
            db.execute('DELETE FROM user_sessions WHERE "user" = ?', (name,))
            db.execute('DELETE FROM user_tokens WHERE "user" = ?', (name,))
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1

    def users(self) -> list[User]:
        """Every user, by name."""
        rows = self._db().execute("SELECT name, role, created FROM users ORDER BY name")
        return [User(name, Role(role), created) for name, role, created in rows]

    def has_users(self) -> bool:
        """True once at least one user exists."""
        return self._db().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def authenticate(self, name: str, password: str) -> Principal | None:
        """The user if the password is theirs; None otherwise (in about the same time)."""
        row = (
            self._db()
            .execute("SELECT role, password FROM users WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            dummy_verify(password)
            return None
        role, stored = row
        return Principal(name, Role(role), "session") if verify_password(password, stored) else None

    # --------------------------------------------------------------- sessions

    def start_session(self, principal: Principal) -> Session:
        """A new session for a user who just logged in (expired ones are swept meanwhile)."""
        secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self._clock()
        expires = now + self._session_ttl_s
        with self._db() as db:
            db.execute("DELETE FROM user_sessions WHERE expires < ?", (now,))
            db.execute(
                'INSERT INTO user_sessions (id_hash, "user", csrf, created, expires)'
                " VALUES (?, ?, ?, ?, ?)",
                (secret_hash(secret), principal.name, csrf, now, expires),
            )
        return Session(secret, csrf, expires, principal)

    def session(self, secret: str) -> ActiveSession | None:
        """The session a cookie names, with the user's current role; None if gone or expired."""
        row = (
            self._db()
            .execute(
                "SELECT u.name, u.role, s.csrf FROM user_sessions s"
                ' JOIN users u ON u.name = s."user"'
                " WHERE s.id_hash = ? AND s.expires > ?",
                (secret_hash(secret), self._clock()),
            )
            .fetchone()
        )
        if row is None:
            return None
        name, role, csrf = row
        return ActiveSession(Principal(name, Role(role), "session"), csrf)

    def end_session(self, secret: str) -> None:
        """Log out: the session's cookie stops working."""
        with self._db() as db:
            db.execute("DELETE FROM user_sessions WHERE id_hash = ?", (secret_hash(secret),))

    # ----------------------------------------------------------------- tokens

    def create_token(self, name: str, label: str = "") -> tuple[int, str]:
        """A new API token for a user: (its id, the token, shown this once)."""
        token = "pct_" + secrets.token_urlsafe(32)
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
                raise AccountError(f"no user {name!r}")
            token_id = insert_returning_id(
                db,
                'INSERT INTO user_tokens (token_hash, "user", label, created) VALUES (?, ?, ?, ?)',
                (secret_hash(token), name, label, self._clock()),
            )
        return token_id, token

    def tokens(self, name: str | None = None) -> list[TokenInfo]:
        """API tokens (of one user, or all), oldest first."""
        sql = 'SELECT id, "user", label, created FROM user_tokens'
        rows = (
            self._db().execute(f'{sql} WHERE "user" = ? ORDER BY id', (name,))
            if name is not None
            else self._db().execute(f"{sql} ORDER BY id")
        )
        return [TokenInfo(*row) for row in rows]

    def revoke_token(self, token_id: int) -> bool:
        """Delete an API token by id; False if there was none."""
        with self._db() as db:
            return db.execute("DELETE FROM user_tokens WHERE id = ?", (token_id,)).rowcount == 1

    def token_principal(self, token: str) -> Principal | None:
        """The user an API token belongs to, with their current role; None if unknown."""
        row = (
            self._db()
            .execute(
                'SELECT u.name, u.role FROM user_tokens t JOIN users u ON u.name = t."user"'
                " WHERE t.token_hash = ?",
                (secret_hash(token),),
            )
            .fetchone()
        )
        return Principal(row[0], Role(row[1]), "token") if row else None
