"""Master settings: one frozen dataclass, loaded from defaults < TOML < environment < flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from cluster_protocol.broker_url import BrokerAddress, BrokerUrlError, parse_broker_url
from cluster_protocol.config import (
    SettingsError,
    check_types,
    field_defaults,
    layer,
    read_secret_file,
    read_toml,
    to_bool,
)

DEFAULT_HTTP: Final = "127.0.0.1:8080"
DEFAULT_CLIENT_ID: Final = "picluster-master"
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


def default_db_path() -> str:
    """Where the SQLite store lives when --db is not given."""
    if os.geteuid() == 0:
        return "/var/lib/picluster/master.db"
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state_home) / "picluster" / "master.db")


@dataclass(frozen=True, slots=True)
class MasterSettings:
    """Everything the master needs, validated before it connects anywhere."""

    broker: str = "mqtt://127.0.0.1:1883"
    db: str = field(default_factory=default_db_path)
    http: str = DEFAULT_HTTP
    prefix: str = "cluster"
    client_id: str = DEFAULT_CLIENT_ID
    session_expiry: int = 7 * 24 * 3600
    keepalive: int = 30
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    ca_file: str | None = None
    api_token: str | None = field(default=None, repr=False)
    stale_factor: float = 3.0
    history_raw_days: float = 7.0
    history_rollup_days: float = 90.0
    ha_discovery: bool = True
    ha_prefix: str = "homeassistant"
    ha_per_entity: bool = False
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        check_types(self)
        try:
            parse_broker_url(self.broker)
        except BrokerUrlError as error:
            raise SettingsError("broker", str(error)) from error
        host, _, port = self.http.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError("http", f"{self.http!r} must be HOST:PORT, e.g. {DEFAULT_HTTP}")
        for name in ("prefix", "ha_prefix", "client_id"):
            value = getattr(self, name)
            if not value or any(c in value for c in "/+#"):
                raise SettingsError(name, f"{value!r} must be one topic level, without / + #")
        positive = ("session_expiry", "keepalive", "stale_factor", "history_raw_days")
        for name in (*positive, "history_rollup_days"):
            if getattr(self, name) <= 0:
                raise SettingsError(name, f"must be greater than 0, got {getattr(self, name)!r}")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise SettingsError("ca_file", f"{self.ca_file!r} is not a readable file")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError("log_level", f"{self.log_level!r} is not DEBUG/INFO/WARNING/ERROR")
        if not self.http_is_loopback and not self.api_token:
            raise SettingsError(
                "api_token",
                f"the API listens on {self.http}, beyond localhost: set api_token "
                "(CLUSTER_API_TOKEN) so that writes need it",
            )

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
        return self.http_host in LOOPBACK_HOSTS

    @property
    def broker_address(self) -> BrokerAddress:
        """The broker URL parsed, with the password from URL, environment or file."""
        address = parse_broker_url(self.broker)
        if address.password is None and self.password is not None:
            address = replace(address, password=self.password)
        return address


_CONVERTERS: Final[Mapping[str, Callable[[str], Any]]] = {
    "session_expiry": int,
    "keepalive": int,
    "stale_factor": float,
    "history_raw_days": float,
    "history_rollup_days": float,
    "ha_discovery": to_bool,
    "ha_per_entity": to_bool,
}


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `run` flags (every one has a CLUSTER_* variable and a TOML key)."""
    parser.add_argument("--config", help="TOML file (env CLUSTER_CONFIG)")
    parser.add_argument("--broker", help="mqtt://[user[:pass]@]host[:port] or mqtts://...")
    parser.add_argument("--db", help="SQLite file for state and history")
    parser.add_argument(
        "--http", help=f"HOST:PORT of the API and dashboard (default {DEFAULT_HTTP})"
    )
    parser.add_argument("--prefix", help="topic prefix (default cluster)")
    parser.add_argument(
        "--client-id", dest="client_id", help="MQTT client id (fixed: it names the session)"
    )
    parser.add_argument(
        "--password-file", dest="password_file", help="file holding the broker password"
    )
    parser.add_argument("--ca-file", dest="ca_file", help="CA certificate for mqtts://")
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--ha-prefix", dest="ha_prefix", help="Home Assistant discovery prefix")
    parser.add_argument(
        "--no-ha-discovery",
        dest="ha_discovery",
        action="store_const",
        const=False,
        help="do not publish Home Assistant discovery",
    )
    return parser


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> MasterSettings:
    """Build settings from parsed flags and the environment; raise SettingsError on bad values."""
    names = [f.name for f in fields(MasterSettings)]
    defaults = field_defaults(MasterSettings)
    config_path = getattr(args, "config", None) or environ.get("CLUSTER_CONFIG")
    file_values = read_toml(Path(config_path)) if config_path else {}
    if "password" in file_values:
        raise SettingsError("password", "keep passwords out of config files: use password_file")
    flags = {name: getattr(args, name, None) for name in names if name != "password"}
    merged: dict[str, Any] = layer(defaults, file_values, environ, flags, _CONVERTERS)
    if merged.get("password") is None and merged.get("password_file"):
        merged["password"] = read_secret_file("password_file", merged["password_file"])
    try:
        return MasterSettings(**{name: merged[name] for name in names})
    except TypeError as error:
        raise SettingsError("config", str(error)) from error


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> MasterSettings:
    """Convenience for tests: parse `run` flags from argv and load settings."""
    return load_settings(build_parser(argparse.ArgumentParser()).parse_args(argv), environ)
