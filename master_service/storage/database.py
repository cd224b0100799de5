"""The master's database: a SQLite file (the default) or a PostgreSQL server.

The `db` setting names it: a path is a SQLite file, `postgresql://user@host:port/dbname` a
PostgreSQL database. Every module writes its SQL once, in the dialect both engines share
(`?` placeholders, `INSERT ... ON CONFLICT`, `RETURNING`); a PostgreSQL connection turns the
placeholders into psycopg's. What differs (row ids, partitions, pragmas, the schema's types)
is chosen by `engine_of` in the few places that need it.
"""

from __future__ import annotations

import enum
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, Self
from urllib.parse import urlsplit

from cluster_protocol.config import SettingsError

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_SECRET_PARAMETER: Final = re.compile(r"(?i)\b(password|sslpassword)=[^&]*")
CONNECT_TIMEOUT_S: Final = 10
"""How long a PostgreSQL connection attempt may take before the master reports it."""


class Engine(enum.Enum):
    """The database engines the master can keep its data in."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class Cursor(Protocol):
    """What the storage code reads from an executed statement (both engines' cursors)."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """The rows left."""

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the storage code uses, with `?` placeholders."""

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (SAVEPOINTs then nest in it)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Run one statement."""

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one statement once per parameter row."""

    def commit(self) -> None:
        """Commit the open transaction."""

    def rollback(self) -> None:
        """Roll the open transaction back."""

    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


class DatabaseRefusedError(SettingsError):
    """The database named by `db` answered but will not serve us: a setting to fix.

    A refused login, a database that does not exist, a role that may not create tables, no
    driver installed. `cluster-master run` exits with 2, which systemd does not restart.
    """

    def __init__(self, problem: str) -> None:
        super().__init__("db", problem)


class DatabaseUnavailableError(RuntimeError):
    """The database server cannot be reached (down, or the network): it may come back.

    `cluster-master run` exits with 1, so systemd tries again; a running master retries.
    """


def engine_of(target: str | Connection) -> Engine:
    """The engine of a `db` value (a path or a URL) or of an open connection."""
    if isinstance(target, sqlite3.Connection):
        return Engine.SQLITE
    if isinstance(target, str):
        scheme, sep, _ = target.partition("://")
        return Engine.POSTGRESQL if sep and scheme.lower() in POSTGRES_SCHEMES else Engine.SQLITE
    return Engine.POSTGRESQL


def redacted(target: str) -> str:
    """`target` fit for a log line or an error: a URL's password replaced by `***`."""
    if engine_of(target) is Engine.SQLITE:
        return target
    parts = urlsplit(target)
    if parts.password is not None:
        userinfo = f"{parts.username or ''}:***@"
        parts = parts._replace(netloc=userinfo + parts.netloc.rpartition("@")[2])
    query = _SECRET_PARAMETER.sub(r"\1=***", parts.query)
    return parts._replace(query=query).geturl()


@dataclass(frozen=True, slots=True)
class Database:
    """Where the master keeps its data, and how to open connections to it.

    `password` is used for PostgreSQL when given (from `db_password_file` or
    `CLUSTER_DB_PASSWORD`); otherwise libpq looks in `PGPASSWORD` and `~/.pgpass` itself.
    """

    target: str
    password: str | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """SQLite or PostgreSQL."""
        return engine_of(self.target)

    @property
    def name(self) -> str:
        """The target without a password, for messages."""
        return redacted(self.target)

    def connect(self, *, read_only: bool = False, autocommit: bool = False) -> Connection:
        """A new connection; read-only ones see each commit as soon as it is made.

        `with connection:` is a transaction on either engine (committed unless it raises);
        on an `autocommit` PostgreSQL connection, statements outside one commit at once.
        """
        if self.engine is Engine.POSTGRESQL:
            return PostgresConnection.open(
                self.target, self.password, read_only=read_only, autocommit=autocommit
            )
        if read_only:
            uri = Path(self.target).absolute().as_uri() + "?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False)
        return open_sqlite(self.target)


def as_database(target: str | Database) -> Database:
    """A `Database` for a `db` value, or the one given."""
    return target if isinstance(target, Database) else Database(target)


def open_sqlite(path: str) -> sqlite3.Connection:
    """Open the SQLite file as it is (WAL, synchronous=FULL), creating its directory."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on the disk before it returns, and the PUBACKs of a batch go out only
    # after its commit, so a power cut of the head cannot undo what the broker let go of.
    # (NORMAL in WAL mode can roll the last commits back on power loss.) One fsync per flush.
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def insert_returning_id(connection: Connection, sql: str, parameters: Sequence[Any]) -> int:
    """Run one INSERT into a table with an `id` key; return the new row's id.

    SQLite's cursor knows it (`lastrowid`, on every SQLite a Pi may have: RETURNING needs
    3.35); PostgreSQL is asked with RETURNING.
    """
    if isinstance(connection, sqlite3.Connection):
        cursor = connection.execute(sql, parameters)
        assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
        return cursor.lastrowid
    (row_id,) = connection.execute(f"{sql} RETURNING id", parameters).fetchone()
    return int(row_id)


def _errors(sqlite_error: type[Exception], *psycopg_names: str) -> tuple[type[Exception], ...]:
    """`sqlite_error`, and psycopg's errors of these names when psycopg is installed."""
    try:
        import psycopg
    except ImportError:
        return (sqlite_error,)
    return (sqlite_error, *(getattr(psycopg, name) for name in psycopg_names))


def database_errors() -> tuple[type[Exception], ...]:
    """The exceptions a failing database raises, for the engines installed."""
    return _errors(sqlite3.Error, "Error")


def outage_errors() -> tuple[type[Exception], ...]:
    """The exceptions of a database in trouble (disk full, locked, server gone), not of a query."""
    return _errors(sqlite3.OperationalError, "OperationalError", "InterfaceError")


def integrity_errors() -> tuple[type[Exception], ...]:
    """The exceptions a broken constraint (a duplicate key) raises, for either engine."""
    return _errors(sqlite3.IntegrityError, "IntegrityError")


# A placeholder outside quotes: `?`, or `:name` (not the `::` of a cast); and `%`, which
# psycopg would read as the start of one of its own.
_PLACEHOLDER: Final = re.compile(r"'[^']*'|\?|(?<![:\w]):([A-Za-z_]\w*)|%")


@lru_cache(maxsize=512)
def psycopg_sql(sql: str) -> str:
    """`sql` with SQLite's `?` and `:name` placeholders written as psycopg's `%s`, `%(name)s`."""

    def replace(found: re.Match[str]) -> str:
        text = found.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({found.group(1)})s"

    return _PLACEHOLDER.sub(replace, sql)


class PostgresConnection:
    """A psycopg 3 connection that takes the storage code's `?` placeholders."""

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        reopen: Callable[[], psycopg.Connection[Any]],
        *,
        read_only: bool = False,
    ) -> None:
        self.raw = raw
        self.read_only = read_only
        self.prepared: set[str] = set()
        """Names of what this session has set up once (temporary tables)."""
        self._reopen = reopen
        self._transactions: list[AbstractContextManager[Any]] = []

    @classmethod
    def open(
        cls, url: str, password: str | None, *, read_only: bool, autocommit: bool = False
    ) -> PostgresConnection:
        """Connect, or raise DatabaseRefusedError / DatabaseUnavailableError (libpq's reason)."""

        def reopen() -> psycopg.Connection[Any]:
            return _connect(url, password, read_only=read_only, autocommit=autocommit)

        return cls(reopen(), reopen, read_only=read_only)

    @property
    def in_transaction(self) -> bool:
        """Always True outside autocommit: psycopg opens one before the first statement."""
        return not self.raw.autocommit

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /) -> Cursor:
        """Run one statement; return its cursor.

        An autocommit connection (the API's readers, logins) that the server dropped, say
        in a restart, connects again before the statement: no transaction can be lost there.
        It also retries the statement that found it dropped.
        """
        import psycopg

        if self._dropped_between_statements:
            self._reconnect()
        # Parameters are always given, even empty: psycopg then reads `%%` as one `%`.
        try:
            return self.raw.execute(psycopg_sql(sql), parameters)
        except psycopg.OperationalError:
            # Outside a transaction, in autocommit, the statement that finds the connection
            # dropped runs again. Only reads run there (logins write inside `with`): a write
            # whose answer was lost could have happened, and must not be run twice.
            if not self._dropped_between_statements:
                raise
        self._reconnect()
        return self.raw.execute(psycopg_sql(sql), parameters)

    @property
    def _dropped_between_statements(self) -> bool:
        """Dropped by the server while no transaction of ours was open: safe to start over."""
        return self.broken and self.raw.autocommit and not self._transactions

    def _reconnect(self) -> None:
        self.raw.close()
        self.raw = self._reopen()
        self.prepared.clear()  # temporary tables went with the old session

    def copy_rows(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Send rows through `COPY ... FROM STDIN` (`sql`): one stream, no statement per row."""
        with self.raw.cursor().copy(sql) as copy:
            for row in rows:
                copy.write_row(row)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Run one statement per parameter row (psycopg pipelines them: one round trip)."""
        cursor = self.raw.cursor()
        cursor.executemany(psycopg_sql(sql), seq_of_parameters)
        return cursor

    @property
    def broken(self) -> bool:
        """True once the server is gone: the connection cannot be used again."""
        return self.raw.broken or self.raw.closed

    def commit(self) -> None:
        """Commit the open transaction."""
        self.raw.commit()

    def rollback(self) -> None:
        """Roll the open transaction back; on a connection the server dropped, connect again.

        After a rollback nothing of ours is open, so a new session loses nothing. While the
        server is still away the closed connection stays, and the next rollback tries again.
        """
        self.prepared.clear()  # what was set up in this transaction is undone too
        if not self.broken:
            self.raw.rollback()
            return
        try:
            self._reconnect()
        except DatabaseUnavailableError as error:
            logger.debug("the database is still away: %s", error)

    def close(self) -> None:
        """Close the connection (what is not committed is rolled back)."""
        self.raw.close()

    def __enter__(self) -> PostgresConnection:
        # As sqlite3's: a transaction, not (as psycopg's own) the connection's lifetime.
        if not self.raw.autocommit:
            return self
        import psycopg

        if self._dropped_between_statements:
            self._reconnect()
        transaction = self.raw.transaction()
        try:
            transaction.__enter__()
        except psycopg.OperationalError:
            if not self._dropped_between_statements:
                raise
            self._reconnect()  # the BEGIN found the connection dropped: nothing had started
            transaction = self.raw.transaction()
            transaction.__enter__()
        self._transactions.append(transaction)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._transactions:
            self._transactions.pop().__exit__(*exc_info)
        elif exc_info[0] is None:
            self.raw.commit()
        else:
            self.rollback()


def _connect(
    url: str, password: str | None, *, read_only: bool, autocommit: bool
) -> psycopg.Connection[Any]:
    """A psycopg connection, or DatabaseRefusedError / DatabaseUnavailableError."""
    try:
        import psycopg
    except ImportError as error:
        raise DatabaseRefusedError(
            "PostgreSQL needs psycopg: install picluster with its postgresql extra "
            "(pip install 'picluster[master,postgresql]')"
        ) from error
    extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if password is not None:
        extra["password"] = password
    try:
        # Readers commit after every statement: an open transaction would hold locks that
        # the retention job's partition drops wait for.
        raw = psycopg.connect(url, autocommit=read_only or autocommit, **extra)
    except psycopg.Error as error:
        problem = f"cannot connect to PostgreSQL at {redacted(url)}: {_first_line(error)}"
        if _refused(str(error)):
            raise DatabaseRefusedError(problem) from error
        raise DatabaseUnavailableError(problem) from error
    # A head that loses power never closes its connections: the server notices only when TCP
    # keepalive gives up (two hours by the kernel's defaults), and until then what the dead
    # session held (several masters: the leader's lock, a row locked for its commit, a share
    # of the history writers' lock) stays held. These make it about 5 s.
    raw.execute(
        "SELECT set_config('tcp_keepalives_idle', '2', false), "
        "set_config('tcp_keepalives_interval', '1', false), "
        "set_config('tcp_keepalives_count', '3', false)"
    )
    if read_only:
        # Not `raw.read_only`: that marks the transactions psycopg begins, and in autocommit
        # it begins none.
        raw.execute("SET default_transaction_read_only = on")
    if not raw.autocommit:
        raw.commit()  # a rollback of the first transaction would undo the settings
    return raw


# libpq's words when the server answered and will not let us in: a setting to fix. Anything
# else (refused or timed-out connections, a server starting up, too many clients, or words
# of a server whose messages are translated) counts as a server away, which systemd retries:
# a master left stopped by a passing fault is worse than one retrying a wrong setting.
_REFUSALS: Final = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # the database or the role
    "is not permitted to log in",
    "permission denied for database",
)


def _refused(message: str) -> bool:
    """True when a failed connection is the server saying no, not a server away."""
    return any(words in message for words in _REFUSALS)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
