"""One-time enrollment tokens in the master's database (`enroll_tokens`, schema version 5).

Only a token's SHA-256 is stored. Every change runs on the ingest thread's single writer
(like node tags), so taking a token is atomic: of two requests with the same token one wins.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from master_service.storage.command_log import Writer
from master_service.storage.store import Store

WRITE_TIMEOUT_S: Final = 30.0
TOKEN_TTL_S: Final = 3600.0


class TokenStoreError(RuntimeError):
    """The writer did not commit in time (the master is not storing)."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A token as handed out: the secret itself exists only here."""

    node: str
    token: str
    expires: float


@dataclass(frozen=True, slots=True)
class Taken:
    """A token exchanged: for which node, and the broker URL stored with it (if any)."""

    node: str
    broker: str | None
    token_hash: str


def token_hash(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class EnrollTokens:
    """Issues tokens, takes each once before it expires, and gives one back on failure."""

    def __init__(self, write: Writer, clock: Callable[[], float]) -> None:
        self._write = write
        self._clock = clock

    def _run(self, task: Callable[[Store], object]) -> object:
        try:
            return self._write(task).result(timeout=WRITE_TIMEOUT_S)
        except TimeoutError as error:
            raise TokenStoreError("the enrollment token store did not answer in time") from error

    def issue(self, node: str, ttl_s: float = TOKEN_TTL_S, broker: str | None = None) -> Issued:
        """A new token for `node`; the node's older unused tokens stop working."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + ttl_s

        def task(store: Store) -> None:
            connection = store.connection
            connection.execute("DELETE FROM enroll_tokens WHERE node = ? AND used IS NULL", (node,))
            connection.execute("DELETE FROM enroll_tokens WHERE expires < ?", (now - 86400,))
            connection.execute(
                "INSERT INTO enroll_tokens (token_hash, node, created, expires, broker, used)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (token_hash(token), node, now, expires, broker),
            )

        self._run(task)
        return Issued(node, token, expires)

    def take(self, token: str) -> Taken | None:
        """Mark a token used and return what it is for; None if unknown, used or expired."""
        hashed = token_hash(token)
        now = self._clock()

        def task(store: Store) -> Taken | None:
            connection = store.connection
            changed = connection.execute(
                "UPDATE enroll_tokens SET used = ? WHERE token_hash = ? AND used IS NULL"
                " AND expires > ?",
                (now, hashed, now),
            ).rowcount
            if changed != 1:
                return None
            node, broker = connection.execute(
                "SELECT node, broker FROM enroll_tokens WHERE token_hash = ?", (hashed,)
            ).fetchone()
            return Taken(str(node), broker, hashed)

        taken = self._run(task)
        return taken if isinstance(taken, Taken) else None

    def give_back(self, taken: Taken) -> None:
        """Make a taken token usable again (the broker failed before the node got anything)."""

        def task(store: Store) -> None:
            store.connection.execute(
                "UPDATE enroll_tokens SET used = NULL WHERE token_hash = ?", (taken.token_hash,)
            )

        self._run(task)

    def drop(self, node: str) -> None:
        """Forget a node's tokens (it was removed)."""

        def task(store: Store) -> None:
            store.connection.execute("DELETE FROM enroll_tokens WHERE node = ?", (node,))

        self._run(task)
