"""Daily partitions of `metrics_raw` on PostgreSQL: created ahead, dropped by retention.

Each UTC day of raw samples is a partition `metrics_raw_pYYYYMMDD` holding `ts` from that
day's midnight to the next. Dropping a day past retention is a quick `DROP TABLE` instead of
deleting millions of rows. A sample whose day has no partition (a node's clock far off, a
spool replayed from long ago) lands in `metrics_raw_default`; when its day's partition is
created later, those rows move into it.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Final

from master_service.storage.database import Connection

logger = logging.getLogger(__name__)

DAY_S: Final = 86400
DAYS_AHEAD: Final = 2
"""Partitions exist from today to this many days after it."""
LOCK_WAIT_S: Final = 1
"""How long a partition change may wait for metrics_raw's lock before it is left for later."""
PARTITION_LOCK: Final = 0x7069_636C_0002
"""Advisory lock key held while partitions are changed (several masters share the tables)."""

_NAME: Final = re.compile(r"^metrics_raw_p(\d{8})$")


def partition_name(day_start: int) -> str:
    """`metrics_raw_pYYYYMMDD` of the UTC day starting at `day_start`."""
    return "metrics_raw_p" + time.strftime("%Y%m%d", time.gmtime(day_start))


def day_of(ts: float) -> int:
    """The start of the UTC day holding `ts`."""
    return int(ts // DAY_S) * DAY_S


def existing_days(connection: Connection) -> dict[int, str]:
    """The day partitions of metrics_raw: day start -> table name."""
    rows = connection.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'metrics_raw'::regclass"
    ).fetchall()
    days: dict[int, str] = {}
    for (name,) in rows:
        found = _NAME.match(name)
        if found is not None:
            days[calendar.timegm(time.strptime(found.group(1), "%Y%m%d"))] = name
    return days


def ensure_partitions(connection: Connection, now: float) -> list[str]:
    """Create the partitions of today and of the DAYS_AHEAD days after it.

    Runs in the caller's transaction. Rows already in the default partition for a new day
    move into it, so nothing is left behind where retention would not find it.
    """
    if not _partition_lock(connection):
        return []
    have = existing_days(connection)
    today = day_of(now)
    created = []
    for offset in range(DAYS_AHEAD + 1):
        day = today + offset * DAY_S
        if day in have:
            continue
        if not _briefly(connection, partial(_create, connection, day)):
            break  # locked: the next pass tries again, and there are days in hand
        created.append(partition_name(day))
    if created:
        logger.info("history: created partitions %s", ", ".join(created))
    return created


def _partition_lock(connection: Connection) -> bool:
    """Take the partition lock for this transaction; False when another session holds it."""
    (taken,) = connection.execute(
        "SELECT pg_try_advisory_xact_lock(?)", (PARTITION_LOCK,)
    ).fetchone()
    return bool(taken)


def _briefly(connection: Connection, change: Callable[[], object]) -> bool:
    """Run a partition change if its locks come within LOCK_WAIT_S; False if they did not.

    Creating or dropping a partition locks metrics_raw, and waits behind whoever holds it (a
    pg_dump, a long report). The writer must not wait with it: ingest would stop. Days are
    created ahead and dropped late, so a change left for the next pass harms nothing.
    """
    import psycopg

    connection.execute("SAVEPOINT partition_change")
    connection.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'")
    try:
        change()
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
        connection.execute("ROLLBACK TO SAVEPOINT partition_change")
        connection.execute("SET LOCAL lock_timeout = DEFAULT")
        logger.warning(
            "history: metrics_raw is locked by another session (a pg_dump?): partitions "
            "are changed at a later pass"
        )
        return False
    connection.execute("SET LOCAL lock_timeout = DEFAULT")
    connection.execute("RELEASE SAVEPOINT partition_change")
    return True


def _create(connection: Connection, day: int) -> str:
    name = partition_name(day)  # our own digits: safe in SQL
    end = day + DAY_S
    connection.execute(f"CREATE TABLE {name} (LIKE metrics_raw INCLUDING DEFAULTS)")
    connection.execute(
        f"WITH moved AS (DELETE FROM metrics_raw_default WHERE ts >= ? AND ts < ? RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved",
        (day, end),
    )
    connection.execute(
        f"ALTER TABLE metrics_raw ATTACH PARTITION {name} FOR VALUES FROM ({day}) TO ({end})"
    )
    return name


def drop_partitions_before(connection: Connection, before: float) -> int:
    """Drop the day partitions that end at or before `before`; return the rows they held."""
    if not _partition_lock(connection):
        return 0
    rows = 0
    dropped = []
    for day, name in sorted(existing_days(connection).items()):
        if day + DAY_S > before:
            continue
        counted: list[int] = []

        def drop(name: str = name, counted: list[int] = counted) -> None:
            # Counted before the DETACH's exclusive lock: ingest and readers need not wait for
            # a scan of a whole day. An expired day gets no new rows.
            (count,) = connection.execute(f"SELECT COUNT(*) FROM {name}").fetchone()
            connection.execute(f"ALTER TABLE metrics_raw DETACH PARTITION {name}")
            connection.execute(f"DROP TABLE {name}")
            counted.append(int(count))

        if not _briefly(connection, drop):
            break
        rows += counted[0]
        dropped.append(name)
    if dropped:
        logger.info("history: dropped partitions %s past retention", ", ".join(dropped))
    return rows
