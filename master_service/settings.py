"""Master settings: one frozen dataclass, loaded from defaults < TOML < environment < flags."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from cluster_protocol import setting_rules as rules
from cluster_protocol import settings as declared
from cluster_protocol.broker_settings import BrokerClientSettings
from cluster_protocol.broker_url import BrokerAddress, parse_broker_url
from cluster_protocol.config import SettingsError
from cluster_protocol.settings import setting
from master_service.alerts.settings import AlertSettings, parse_alerts
from master_service.storage.database import Database, Engine

DEFAULT_HTTP: Final = "127.0.0.1:8080"
DEFAULT_CLIENT_ID: Final = "picluster-master"
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")
INGEST_CLIENTS: Final = ("paho", "mqtt5")


def default_db_path() -> str:
    """Where the SQLite store lives when --db is not given."""
    if os.geteuid() == 0:
        return "/var/lib/picluster/master.db"
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state_home) / "picluster" / "master.db")


def host_port(value: str) -> str | None:
    """`HOST:PORT` with a port from 1 to 65535."""
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"{value!r} must be HOST:PORT, e.g. {DEFAULT_HTTP}"


def ingest_client(value: str) -> str | None:
    """One of the MQTT clients the master can receive with."""
    if value in INGEST_CLIENTS:
        return None
    return f"must be one of {', '.join(INGEST_CLIENTS)}, got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterSettings(BrokerClientSettings):
    """Everything the master needs, validated before it connects anywhere."""

    db: str = setting(
        default_factory=default_db_path,
        help="SQLite file for state and history, or postgresql://user@host:port/dbname "
        "(docs/scale-out.md)",
        check=rules.database,
        metavar="PATH|URL",
    )
    # PostgreSQL's password: CLUSTER_DB_PASSWORD or db_password_file, never a flag or in the
    # file (libpq's own PGPASSWORD and ~/.pgpass work too when neither is set).
    db_password: str | None = setting(
        None,
        help="PostgreSQL password",
        secret=True,
        in_file="keep passwords out of config files: use db_password_file",
    )
    db_password_file: str | None = setting(
        None,
        help="file whose first line is the PostgreSQL password",
        secret_file_of="db_password",
        metavar="FILE",
    )
    http: str = setting(
        DEFAULT_HTTP,
        help=f"HOST:PORT of the API and dashboard (default {DEFAULT_HTTP})",
        check=host_port,
        metavar="HOST:PORT",
    )
    client_id: str = setting(
        DEFAULT_CLIENT_ID,
        help="MQTT client id (fixed: it names the session)",
        check=rules.topic_level,
        metavar="ID",
    )
    session_expiry: int = setting(
        7 * 24 * 3600,
        help="seconds the broker keeps the session while the master is away",
        check=rules.positive,
        metavar="SECONDS",
    )
    api_token: str | None = setting(
        None, help="bearer token with the admin role, for scripts (docs/security.md)", secret=True
    )
    metrics_token: str | None = setting(
        None, help="bearer token /metrics needs, when set (for Prometheus)", secret=True
    )
    require_login: bool = setting(
        False, help="require a login even on localhost (e.g. behind a reverse proxy)"
    )
    stale_factor: float = setting(
        3.0,
        help="a node silent for this many intervals is stale",
        check=rules.positive,
        metavar="FACTOR",
    )
    history_raw_days: float = setting(
        7.0, help="days raw metrics are kept", check=rules.positive, metavar="DAYS"
    )
    history_rollup_days: float = setting(
        90.0, help="days 1-minute averages are kept", check=rules.positive, metavar="DAYS"
    )
    ha_discovery: bool = setting(True, help="publish Home Assistant discovery")
    ha_prefix: str = setting(
        "homeassistant", help="Home Assistant discovery prefix", check=rules.topic_level
    )
    ha_per_entity: bool = setting(False, help="also use per-entity discovery topics")
    ingest_client: str = setting(
        "mqtt5",
        help="MQTT client that receives cluster/#: mqtt5 (its own connection, batched reads "
        "and PUBACKs; publishing stays on paho), or paho (one connection for both)",
        check=ingest_client,
        normalize=str.lower,
        metavar="CLIENT",
    )
    several_masters: bool = setting(
        False,
        help="one of several masters on one PostgreSQL database: metrics shared between them, "
        "one leader for the rest (docs/scale-out.md)",
    )
    member_timeout: float = setting(
        30.0,
        help="several masters: seconds a master may be silent before the leader takes over "
        "and ends its broker session, storing what it held",
        check=rules.positive,
        metavar="SECONDS",
    )
    alerts: AlertSettings = setting(  # noqa: RUF009 (a field declaration, not a default)
        default_factory=AlertSettings,
        help="[alerts] table: channels, heartbeat, built-in and custom rules (docs/alerts.md)",
        file_only=True,
        from_file=parse_alerts,
    )

    def __post_init__(self) -> None:
        declared.finish(self)
        if self.several_masters:
            self._check_several_masters()

    def _check_several_masters(self) -> None:
        if self.database.engine is not Engine.POSTGRESQL:
            raise SettingsError(
                "several_masters", "needs db = postgresql://... (the masters share one database)"
            )
        if self.ingest_client != "mqtt5":
            raise SettingsError(
                "several_masters", "needs ingest_client = mqtt5 (a shared MQTT 5 subscription)"
            )
        if self.client_id == DEFAULT_CLIENT_ID:
            # Each master needs a session of its own: the same id on two heads would make the
            # broker drop one connection for the other, back and forth.
            host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "head"
            object.__setattr__(self, "client_id", f"{DEFAULT_CLIENT_ID}-{host}")

    @property
    def database(self) -> Database:
        """Where state and history are kept, with the PostgreSQL password if one is set."""
        return Database(self.db, self.db_password)

    @property
    def http_host(self) -> str:
        """Host part of `http`, without IPv6 brackets."""
        return self.http.rpartition(":")[0].strip("[]")

    @property
    def http_port(self) -> int:
        """Port part of `http`."""
        return int(self.http.rpartition(":")[2])

    @property
    def http_is_loopback(self) -> bool:
        """True when the API is reachable from this machine only."""
        if self.http_host in LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(self.http_host).is_loopback  # all of 127.0.0.0/8
        except ValueError:
            return False  # a host name other than localhost: it may resolve to anything

    @property
    def login_required(self) -> bool:
        """True when the dashboard and API need a login: beyond localhost, or when asked."""
        return self.require_login or not self.http_is_loopback

    @property
    def broker_address(self) -> BrokerAddress:
        """The broker URL parsed, with the password from URL, environment or file."""
        return replace(parse_broker_url(self.broker), password=self.password)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config` and the `run` flags: one per setting, secrets excepted."""
    declared.add_arguments(parser, MasterSettings)
    return parser


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> MasterSettings:
    """Build settings from parsed flags and the environment; raise SettingsError on bad values."""
    return declared.load(MasterSettings, vars(args), environ)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> MasterSettings:
    """Convenience for tests: parse `run` flags from argv and load settings."""
    return load_settings(build_parser(argparse.ArgumentParser()).parse_args(argv), environ)
