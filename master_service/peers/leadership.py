"""Who leads: a PostgreSQL advisory lock held on a connection of its own, and who is who.

The lock is tied to its session: a leader that dies, or whose connection the server closes,
frees it, and a follower polling `try_lead` takes it. Each master also keeps its row in
`masters` (role, API address, last seen), which followers read to point at the leader.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from master_service.storage.database import Connection, Database, PostgresConnection

logger = logging.getLogger(__name__)

LEADER_LOCK: Final = 0x7069_636C_0002
"""Advisory lock key of the leader ("picl" and 2; the migrations use 1)."""

# The epoch waits for a predecessor's commit under way; one that never ends (a session the
# server has not yet found dead: storage/database.py sets keepalive to about 5 s) must not
# hold this master, and the lock, for long: the lock is given up and taken again later.
_LOCK_TIMEOUT: Final = "SET lock_timeout = '10s'"
# `seen` by the server's clock: the heads' clocks may disagree, and a head judged silent by
# a clock running ahead would have its session taken from under it.
_NOW: Final = "EXTRACT(EPOCH FROM clock_timestamp())"
_HEARTBEAT: Final = (
    f"INSERT INTO masters (client_id, role, api, seen) VALUES (%s, %s, %s, {_NOW}) "
    "ON CONFLICT (client_id) DO UPDATE SET role = excluded.role, api = excluded.api, "
    "seen = excluded.seen"
)

SOLE: Final = "sole"  # the only master (SQLite, or PostgreSQL without several_masters)
LEADER: Final = "leader"
FOLLOWER: Final = "follower"


class NotLeaderError(RuntimeError):
    """A commit of a leader whose lead another master has taken since."""


class LeaderLock:
    """The leader's advisory lock, polled by followers and kept by the leader."""

    def __init__(self, database: Database, client_id: str, api: str) -> None:
        self.database = database
        self.client_id = client_id
        self.api = api
        self.held = False
        self.epoch: int | None = None  # leader_epoch when this master took the lead
        # psycopg's own connection for the lock: it must never reconnect silently, which
        # would lose the lock without a word.
        self._raw: Any = None
        self._lock = threading.Lock()
        # Everything else (the leader's address, silent members) on a connection of its own,
        # which may reconnect: asking must never touch the lock's.
        self._side: PostgresConnection | None = None
        self._side_lock = threading.Lock()

    def try_lead(self) -> bool:
        """Take the lock if it is free; True while this master holds it.

        Raises the database's errors when it cannot be reached (the caller retries).
        """
        with self._lock:
            return self._try_lead()

    def _try_lead(self) -> bool:
        raw = self._connection()
        if not self.held:
            (taken,) = raw.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            if taken:
                # The epoch first: a predecessor's commit still under way (it holds the row
                # FOR SHARE) finishes before this, and every later one of its fails the check.
                try:
                    (self.epoch,) = raw.execute(
                        "UPDATE leader_epoch SET epoch = epoch + 1 RETURNING epoch"
                    ).fetchone()
                except Exception:
                    self._drop()  # the lock goes with the connection
                    raise
                self.held = True
                logger.info("this master (%s) leads (epoch %d)", self.client_id, self.epoch)
        self._heartbeat(raw)
        return self.held

    def still_held(self) -> bool:
        """True while the lock is ours without a break; False once its connection broke.

        A server that cannot be reached keeps the answer True: nobody else can take the lock
        there either, unless only this head lost its way to it; its commits are fenced off
        meanwhile (`check_epoch`).
        """
        with self._lock:
            raw = self._raw
            if raw is not None and not raw.broken and not raw.closed and self.held:
                try:
                    self._heartbeat(raw)
                    return True
                except Exception as error:  # the connection went, with the lock
                    logger.warning("the leader's lock connection broke: %s", error)
            self._drop()
            try:
                # Taken again, it is a new lead (a new epoch): another master may have led
                # meanwhile, so this one's state is old. False: built again from the database.
                self._try_lead()
                return False
            except Exception as error:
                logger.warning("cannot reach the database to keep the lead: %s", error)
                return True

    def check_epoch(self, connection: Connection) -> None:
        """In a leader's commit: raise NotLeaderError if another master has led since."""
        row = connection.execute("SELECT epoch FROM leader_epoch FOR SHARE").fetchone()
        if row is None or row[0] != self.epoch:
            raise NotLeaderError(
                f"another master leads now (epoch {row[0] if row else None}, ours {self.epoch})"
            )

    def leader_api(self) -> str | None:
        """The API address of the master that leads (by the latest heartbeat), if any."""
        row = self._ask(
            "SELECT api FROM masters WHERE role = ? ORDER BY seen DESC LIMIT 1", (LEADER,)
        )
        return None if not row else str(row[0][0])

    def silent_members(self, timeout_s: float) -> list[str]:
        """Client ids of the other masters not heard of for `timeout_s` (gone, or stopped)."""
        rows = self._ask(
            f"SELECT client_id FROM masters WHERE client_id <> ? AND seen < {_NOW} - ?",
            (self.client_id, timeout_s),
        )
        return [str(client_id) for (client_id,) in rows]

    def forget_member(self, client_id: str) -> None:
        """Drop a master from the table (its session was ended)."""
        self._ask("DELETE FROM masters WHERE client_id = ? RETURNING client_id", (client_id,))

    def release(self) -> None:
        """Give the lock up: closing the session frees it.

        The row in `masters` stays: a master stopped for longer than `member_timeout` has
        its session (its share of the metrics, queued meanwhile) taken over by the leader.
        """
        with self._lock:
            self._drop()
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None

    def _ask(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        with self._side_lock:
            if self._side is None:
                side = self.database.connect(autocommit=True)
                assert isinstance(side, PostgresConnection)  # several masters: checked
                self._side = side
            return self._side.execute(sql, parameters).fetchall()

    def _heartbeat(self, raw: Any) -> None:
        role = LEADER if self.held else FOLLOWER
        raw.execute(_HEARTBEAT, (self.client_id, role, self.api))

    def _connection(self) -> Any:
        if self._raw is None or self._raw.broken or self._raw.closed:
            self._drop()
            connection = self.database.connect(autocommit=True)
            assert isinstance(connection, PostgresConnection)  # several masters: checked
            connection.raw.execute(_LOCK_TIMEOUT)
            self._raw = connection.raw
        return self._raw

    def _drop(self) -> None:
        if self.held:
            logger.warning("this master (%s) no longer holds the lead", self.client_id)
        self.held = False
        if self._raw is not None:
            try:
                self._raw.close()
            except Exception:  # already gone
                logger.debug("closing the lock connection failed", exc_info=True)
        self._raw = None
