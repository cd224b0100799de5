"""Schema versions of the master's database: `PRAGMA user_version` and ordered migrations.

Version 1 is the schema the master wrote before versions existed (such a file has
user_version 0 but already holds `metrics_raw`). Each later version's migration adds the
history columns of the metrics whose `history_since` is that version (cluster_protocol's
metric table), after the statements listed for it in `_STATEMENTS`. Before migrating an
existing file the master copies it to `<db>.bak-v<old version>`. A file whose version is
newer than this code knows is refused and left untouched.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster_protocol import METRICS
from cluster_protocol.config import SettingsError

logger = logging.getLogger(__name__)

HISTORY_TABLES: Final = ("metrics_raw", "metrics_1m")


# Version 1's columns in the order that release created them: frozen, as files exist with
# exactly these. The metric table marks the same metrics `history_since=1`.
V1_HISTORY_COLUMNS: Final = (
    "cpu_percent",
    "memory_percent",
    "swap_percent",
    "load_1",
    "temperature_celsius",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "root_disk_percent",
)


def history_columns(version: int) -> tuple[str, ...]:
    """The history columns added by one schema version (from the metric table after 1)."""
    if version == 1:
        return V1_HISTORY_COLUMNS
    return tuple(m.key for m in METRICS if m.history_since == version)


def _v1_statements() -> list[str]:
    columns = ", ".join(f"{name} REAL" for name in V1_HISTORY_COLUMNS)
    return [
        "CREATE TABLE IF NOT EXISTS nodes ("
        " node TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS metrics_raw (node TEXT NOT NULL, ts REAL NOT NULL, {columns})",
        "CREATE INDEX IF NOT EXISTS metrics_raw_node_ts ON metrics_raw (node, ts)",
        "CREATE TABLE IF NOT EXISTS metrics_1m (node TEXT NOT NULL, ts REAL NOT NULL,"
        f" samples INTEGER NOT NULL, {columns}, PRIMARY KEY (node, ts)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS history_meta (key TEXT PRIMARY KEY, value REAL NOT NULL)",
    ]


# Commands sent to nodes and their replies. Before version 2 the command log created this
# table itself at start, so a version-1 file may already hold it: IF NOT EXISTS keeps it.
_COMMANDS_STATEMENTS: Final = (
    "CREATE TABLE IF NOT EXISTS commands ("
    " id TEXT PRIMARY KEY,"
    " node TEXT NOT NULL,"
    " command TEXT NOT NULL,"
    " args TEXT NOT NULL,"
    " sent_at REAL NOT NULL,"
    " expires REAL NOT NULL,"
    " status TEXT NOT NULL,"  # pending, ok, error, timeout
    " result TEXT,"  # JSON of the reply's result
    " error TEXT,"
    " replied_at REAL)",
    "CREATE INDEX IF NOT EXISTS commands_node_sent ON commands (node, sent_at)",
)

# Alerts (master_service/alerts): the state of each (node, rule), what happened, the
# notifications not yet accepted by their channel, and silences.
_ALERTS_STATEMENTS: Final = (
    "CREATE TABLE alerts ("
    " node TEXT NOT NULL,"
    " rule TEXT NOT NULL,"
    " severity TEXT NOT NULL,"
    " state TEXT NOT NULL,"  # firing, or ok while its resolved notice is owed
    " since REAL NOT NULL,"
    " value REAL,"
    " threshold REAL,"
    " detail TEXT NOT NULL,"
    " notified INTEGER NOT NULL,"  # 1: the channels were told it fires
    " updated REAL NOT NULL,"
    " PRIMARY KEY (node, rule)) WITHOUT ROWID",
    "CREATE TABLE alert_history ("
    " id INTEGER PRIMARY KEY,"
    " at REAL NOT NULL,"
    " node TEXT NOT NULL,"
    " rule TEXT NOT NULL,"
    " severity TEXT NOT NULL,"
    " event TEXT NOT NULL,"  # firing, resolved, fired, flapping, settled
    " value REAL,"
    " threshold REAL,"
    " since REAL,"
    " message TEXT NOT NULL,"
    " notified INTEGER NOT NULL)",
    "CREATE INDEX alert_history_at ON alert_history (at)",
    "CREATE TABLE alert_outbox ("
    " id INTEGER PRIMARY KEY,"
    " created REAL NOT NULL,"
    " channel TEXT NOT NULL,"  # Channel.key: a hash, so no URL secret is stored
    " title TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " notify_type TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt REAL NOT NULL,"
    " last_error TEXT)",
    "CREATE TABLE alert_silences ("
    " id INTEGER PRIMARY KEY,"
    " node TEXT NOT NULL,"  # a node id or a glob
    " rule TEXT,"  # NULL: every rule
    " starts REAL NOT NULL,"
    " ends REAL NOT NULL,"
    " comment TEXT NOT NULL)",
)

# Master-side node tags (`cluster-master nodes tag`); a node's own tags come in its details.
_NODE_TAGS_STATEMENTS: Final = (
    "CREATE TABLE node_tags (node TEXT NOT NULL, tag TEXT NOT NULL,"
    " PRIMARY KEY (node, tag)) WITHOUT ROWID",
)

# One-time enrollment tokens (master_service/enrollment): only their SHA-256 is stored.
_ENROLL_TOKENS_STATEMENTS: Final = (
    "CREATE TABLE enroll_tokens ("
    " token_hash TEXT PRIMARY KEY,"
    " node TEXT NOT NULL,"
    " created REAL NOT NULL,"
    " expires REAL NOT NULL,"
    " broker TEXT,"  # the broker URL given to the node; NULL: derived from the request
    " used REAL)",  # when it was exchanged; NULL while unused
    "CREATE INDEX enroll_tokens_node ON enroll_tokens (node)",
)

# Dashboard and API logins (master_service/auth): a password's scrypt hash, and of a session
# or an API token only its SHA-256. A user's sessions and tokens go with the user.
_USERS_STATEMENTS: Final = (
    "CREATE TABLE users ("
    " name TEXT PRIMARY KEY,"
    " role TEXT NOT NULL CHECK (role IN ('viewer', 'admin')),"
    " password TEXT NOT NULL,"  # scrypt$N$r$p$salt$hash
    " created REAL NOT NULL)",
    "CREATE TABLE user_sessions ("
    " id_hash TEXT PRIMARY KEY,"
    " user TEXT NOT NULL,"
    " csrf TEXT NOT NULL,"  # sent back by the dashboard in X-CSRF-Token on every write
    " created REAL NOT NULL,"
    " expires REAL NOT NULL)",
    "CREATE INDEX user_sessions_user ON user_sessions (user)",
    "CREATE TABLE user_tokens ("
    " id INTEGER PRIMARY KEY,"
    " token_hash TEXT NOT NULL UNIQUE,"
    " user TEXT NOT NULL,"
    " label TEXT NOT NULL,"
    " created REAL NOT NULL)",
)

# Several masters on one PostgreSQL (master_service/peers): the metrics a follower stored, kept
# for the leader's live state until it takes them, and the masters sharing the database.
_PEERS_STATEMENTS: Final = (
    "CREATE TABLE forwarded_metrics ("
    " id INTEGER PRIMARY KEY,"
    " topic TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " received_at REAL NOT NULL)",
    "CREATE TABLE masters ("
    " client_id TEXT PRIMARY KEY,"
    " role TEXT NOT NULL,"
    " api TEXT NOT NULL,"
    " seen REAL NOT NULL)",
    # Raised by each new leader; a leader's every commit checks it is still its own, so one
    # that lost the lock without knowing yet cannot write over its successor's state.
    "CREATE TABLE leader_epoch (epoch INTEGER NOT NULL)",
    "INSERT INTO leader_epoch (epoch) VALUES (0)",
)

# Statements of a version other than its new history columns (which come from the metric
# table). A change that is not a new metric column (an index, a new table) goes here, keyed
# by the next version number.
_STATEMENTS: Final[Mapping[int, Sequence[str]]] = {
    1: _v1_statements(),
    2: _COMMANDS_STATEMENTS,
    3: _ALERTS_STATEMENTS,
    4: _NODE_TAGS_STATEMENTS,
    5: _ENROLL_TOKENS_STATEMENTS,
    6: _USERS_STATEMENTS,
    7: _PEERS_STATEMENTS,
}


@dataclass(frozen=True, slots=True)
class Migration:
    """The statements that take a database from `version - 1` to `version`."""

    version: int
    statements: tuple[str, ...]


def _migration(version: int) -> Migration:
    added = (
        f"ALTER TABLE {table} ADD COLUMN {name} REAL"
        for name in history_columns(version)
        for table in HISTORY_TABLES
    )
    statements = (*_STATEMENTS.get(version, ()), *(added if version > 1 else ()))
    return Migration(version, statements)


SCHEMA_VERSION: Final = max(
    1, *_STATEMENTS, *(m.history_since for m in METRICS if m.history_since is not None)
)
"""The schema version this code writes."""

MIGRATIONS: Final = tuple(_migration(v) for v in range(1, SCHEMA_VERSION + 1))
"""Every migration, version 1 first."""


class SchemaTooNewError(SettingsError):
    """The database was written by a newer picluster; it is refused and left unchanged."""

    def __init__(self, path: str, found: int) -> None:
        super().__init__(
            "db",
            f"{path} has schema version {found}, but this picluster knows versions up to "
            f"{SCHEMA_VERSION}: it was written by a newer release. Upgrade picluster, or set "
            "db to another database; it was not modified.",
        )
        self.path = path
        self.found = found


def stored_version(connection: sqlite3.Connection) -> int:
    """The file's schema version; 1 for a file from before versions existed."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == 0 and _has_table(connection, "metrics_raw"):
        return 1
    return int(version)


def refuse_if_too_new(path: str) -> None:
    """Raise SchemaTooNewError when the file exists with a newer version (read-only look)."""
    if path == ":memory:" or not Path(path).exists():
        return
    # mode=ro: nothing is written, not even the journal mode, before the version is known.
    connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = stored_version(connection)
    finally:
        connection.close()
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(path, found)


def migrate(connection: sqlite3.Connection, path: str) -> tuple[int, int]:
    """Bring the database to SCHEMA_VERSION, copying the file first; return (old, new)."""
    (stamped,) = connection.execute("PRAGMA user_version").fetchone()
    old = stored_version(connection)
    if old > SCHEMA_VERSION:
        raise SchemaTooNewError(path, old)
    if stamped == SCHEMA_VERSION:
        return old, old
    # A file from before versions that is already current only needs its version stamped.
    backup = backup_copy(connection, path, old) if 0 < old < SCHEMA_VERSION else None
    connection.commit()  # no transaction of Python's own may be open around ours
    connection.execute("BEGIN IMMEDIATE")
    try:
        for migration in MIGRATIONS[old:]:
            for statement in migration.statements:
                connection.execute(statement)
        # PRAGMA does not take a parameter; SCHEMA_VERSION is an int of ours.
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    if backup is not None:
        logger.info(
            "database %s upgraded from schema version %d to %d (the old file is kept as %s)",
            path,
            old,
            SCHEMA_VERSION,
            backup,
        )
    return old, SCHEMA_VERSION


def backup_copy(connection: sqlite3.Connection, path: str, version: int) -> str | None:
    """Copy the database to `<path>.bak-v<version>` (or -2, -3 ... beside an older copy)."""
    if path == ":memory:":
        return None
    target = Path(f"{path}.bak-v{version}")
    n = 1
    while target.exists():
        n += 1
        target = Path(f"{path}.bak-v{version}-{n}")
    partial = target.with_name(target.name + ".partial")
    copy = sqlite3.connect(partial)
    try:
        # The backup API copies a consistent snapshot, the WAL's committed pages included.
        connection.backup(copy)
    finally:
        copy.close()
    partial.replace(target)
    return str(target)


def _has_table(connection: sqlite3.Connection, name: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None
