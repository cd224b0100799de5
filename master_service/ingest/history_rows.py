"""History rows of validated metrics payloads, inserted with one `executemany` per batch.

`Store.append_history` builds each row through `history_row` (a `metric_value` call and two
`isinstance` per column, 3-9 us a row). Payloads that reached the ingest path have passed
their schema, so a documented numeric key holds an int, a float or null: a column is then
one `dict.get`. What is stored is the same as for `history_row`'s rows (a unit test keeps it
so); only derived columns (`root_disk_percent`) still go through `metric_value`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from cluster_protocol import HISTORY_METRICS, Metric, metric, metric_value
from cluster_protocol.metrics import root_disk_percent
from cluster_protocol.schemas import METRICS_FIELDS
from master_service.storage.database import Connection, PostgresConnection

logger = logging.getLogger(__name__)

_NUMERIC: Final = frozenset(("number", "integer", "null"))

# Columns read straight from the payload: documented keys that can only hold numbers or null.
DIRECT: Final[tuple[str, ...]] = tuple(
    key
    for key in HISTORY_METRICS
    if key in METRICS_FIELDS and set(METRICS_FIELDS[key].split("|")) <= _NUMERIC
)
# The others (derived values such as root_disk_percent): computed as the store does.
DERIVED: Final = tuple(metric(key) for key in HISTORY_METRICS if key not in DIRECT)


def _derive(m: Metric) -> Callable[[Mapping[str, Any]], float | None]:
    """How to compute one derived column from a payload, as `history_row` would."""
    if m.key == "root_disk_percent":
        return root_disk_percent  # already a float or None: one call instead of three
    return lambda payload: _number(metric_value(m, payload))


INSERT_SQL: Final = (
    f"INSERT INTO metrics_raw (node, ts, {', '.join((*DIRECT, *(m.key for m in DERIVED)))}) "
    f"VALUES ({', '.join('?' for _ in range(2 + len(HISTORY_METRICS)))})"
    # PostgreSQL keeps (node, ts) unique: a batch retried after a commit that did happen
    # adds nothing (storage/postgres_schema.py).
    " ON CONFLICT DO NOTHING"
)


def _number(value: Any) -> float | None:
    """`history_row`'s rule: a number (not a bool) as a float, anything else NULL."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def history_values(node: str, ts: float, payload: Mapping[str, Any]) -> tuple[Any, ...]:
    """The row for `INSERT_SQL` of one validated metrics payload.

    A direct column's value goes in as it is (an int, a float or None): every history column
    is REAL, so SQLite stores an int as the float `history_row` would have made of it.
    """
    return (node, ts, *map(payload.get, DIRECT), *[derive(payload) for derive in _DERIVE])


_DERIVE: Final = tuple(_derive(m) for m in DERIVED)


def insert_history(
    connection: Connection, rows: Iterable[tuple[str, float, Mapping[str, Any]]]
) -> list[float]:
    """Insert the samples in one statement (not committed); return their sender `ts`."""
    values = [history_values(node, ts, payload) for node, ts, payload in rows]
    if isinstance(connection, PostgresConnection) and may_stage(connection):
        copy_history(connection, values)
    elif isinstance(connection, PostgresConnection):
        connection.executemany(INSERT_SQL, values)
    else:
        _insert_sqlite(connection, values)
    return [row[1] for row in values]


def _insert_sqlite(connection: Connection, values: list[tuple[Any, ...]]) -> None:
    """SQLite: the rows in one executemany; an int past 64 bits is stored as its float.

    Such an int is valid JSON and a valid number, but SQLite cannot bind it (OverflowError):
    once, that kept the whole batch, and every later one, out of the store for ever. The
    executemany stops at that row, so a savepoint takes back the rows before it.
    """
    if not connection.in_transaction:
        connection.execute("BEGIN")  # or the savepoint's RELEASE would commit
    connection.execute("SAVEPOINT history_rows")
    try:
        connection.executemany(INSERT_SQL, values)
    except OverflowError:
        connection.execute("ROLLBACK TO history_rows")
        logger.warning("a metrics sample held an integer too large for SQLite: stored as a float")
        connection.executemany(INSERT_SQL, [_as_floats(row) for row in values])
    connection.execute("RELEASE history_rows")


def _as_floats(row: tuple[Any, ...]) -> tuple[Any, ...]:
    node, ts, *columns = row
    return (node, ts, *(float(v) if type(v) is int else v for v in columns))


_COLUMN_LIST: Final = ", ".join(("node", "ts", *DIRECT, *(m.key for m in DERIVED)))
_STAGING: Final = "metrics_staging"
_NO_STAGING: Final = "no temporary tables"
_CREATE_STAGING: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} "
    "(LIKE metrics_raw INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MOVE_STAGED: Final = (
    f"WITH staged AS (DELETE FROM {_STAGING} RETURNING {_COLUMN_LIST}) "
    f"INSERT INTO metrics_raw ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM staged "
    "ON CONFLICT DO NOTHING"
)


def may_stage(connection: PostgresConnection) -> bool:
    """True when this session may create the staging table (TEMPORARY on the database).

    A role without it (a hardened set-up) still stores history, one statement per row.
    """
    if _STAGING in connection.prepared:
        return True
    if _NO_STAGING in connection.prepared:
        return False
    (allowed,) = connection.execute(
        "SELECT has_database_privilege(current_database(), 'TEMPORARY')"
    ).fetchone()
    if not allowed:
        connection.prepared.add(_NO_STAGING)
        logger.warning(
            "the database role may not create temporary tables: history is written row by "
            "row, which costs the master more (GRANT TEMPORARY ON DATABASE ... TO the role)"
        )
    return bool(allowed)


def copy_history(connection: PostgresConnection, values: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows by COPY into a temporary table, then one INSERT ... SELECT.

    psycopg's pipelined executemany still handles one statement and one result per row:
    COPY costs the master a third of that (bench/README.md, "Storage"). COPY cannot skip a
    row already stored, hence the staging table and the INSERT's ON CONFLICT DO NOTHING.
    """
    if not values:
        return
    if _STAGING not in connection.prepared:
        connection.execute(_CREATE_STAGING)
        connection.prepared.add(_STAGING)
    connection.copy_rows(f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN", values)
    connection.execute(_MOVE_STAGED)
