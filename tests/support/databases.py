"""Databases for the master processes the tests start: a SQLite file or a PostgreSQL URL."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from master_service.storage.database import Engine, engine_of


@dataclass(frozen=True)
class MasterDatabase:
    """A database for a `cluster-master` process: its `--db`, and the environment it needs.

    A PostgreSQL URL goes on the command line without its password, which travels in
    CLUSTER_DB_PASSWORD, as the settings require.
    """

    target: str
    env: dict[str, str]

    @classmethod
    def of(cls, db_target: str) -> MasterDatabase:
        """The `--db` and environment for `db_target` (a path, or a URL with a password)."""
        if engine_of(db_target) is Engine.SQLITE:
            return cls(db_target, {})
        parts = urlsplit(db_target)
        netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
        return cls(
            parts._replace(netloc=netloc).geturl(), {"CLUSTER_DB_PASSWORD": parts.password or ""}
        )
