"""Rules for setting values, shared by both programs so the same mistake reads the same.

Each takes a value of the setting's type and returns None when it holds, else what is wrong.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from cluster_protocol.broker_url import BrokerUrlError, parse_broker_url
from cluster_protocol.node_id import NodeIdError, validate_node_id

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def positive(value: float) -> str | None:
    """A finite number greater than 0."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def topic_level(value: str) -> str | None:
    """One MQTT topic level: not empty, no '/', '+' or '#'."""
    if value and not any(char in value for char in "/+#"):
        return None
    return f"must be one topic level (not empty, no / + #), got {value!r}"


def log_level(value: str) -> str | None:
    """One of the logging levels, in capitals (normalised so already)."""
    if value in LOG_LEVELS:
        return None
    return f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}"


def existing_file(value: str) -> str | None:
    """A path to a file that exists."""
    return None if Path(value).is_file() else f"file {value} does not exist"


def broker_url(value: str) -> str | None:
    """An `mqtt://` or `mqtts://` URL."""
    try:
        parse_broker_url(value)
    except BrokerUrlError as error:
        return str(error)
    return None


def node_id(value: str) -> str | None:
    """A node id by the contract's rules."""
    try:
        validate_node_id(value)
    except NodeIdError as error:
        return str(error)
    return None


def not_empty(value: Any) -> str | None:
    """Not an empty string or list."""
    return None if value else "must not be empty"


def upper(value: str) -> str:
    """Normaliser for log levels: `debug` means `DEBUG`."""
    return value.upper()


def database(value: str) -> str | None:
    """A SQLite file's path, or a `postgresql://user@host:port/dbname` URL without a password."""
    if not value:
        return "must be the path of a SQLite file or a postgresql:// URL, got an empty value"
    found = _URL_SCHEME.match(value)
    if found is None:
        return None
    # The URL itself is not repeated: it may hold a password.
    scheme = found.group(1).lower()
    if scheme not in ("postgresql", "postgres"):
        return (
            f"a {found.group(1)}:// URL is not a database the master can use: give a SQLite "
            "file's path (e.g. /var/lib/picluster/master.db) or a "
            "postgresql://user@host:port/dbname URL"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as error:
        return f"is not a valid postgresql:// URL: {error}"
    query_keys = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if parts.password is not None or query_keys & {"password", "sslpassword"}:
        return (
            "holds a password, which would show in `ps` and in config files: give it with "
            "db_password_file or CLUSTER_DB_PASSWORD (or PGPASSWORD, ~/.pgpass)"
        )
    if not parts.path.strip("/"):
        return "must name the database: postgresql://user@host:port/dbname"
    return None
