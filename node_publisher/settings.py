"""Node settings: one frozen dataclass, loaded from defaults < TOML file < environment < flags."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from cluster_protocol import (
    BrokerAddress,
    BrokerUrlError,
    NodeIdError,
    node_id_from_hostname,
    parse_broker_url,
    validate_node_id,
)
from cluster_protocol.config import SettingsError, layer, read_secret_file, read_toml, to_bool
from node_publisher.tasks import TaskSpec, parse_tasks

DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_INTERVAL_S: Final = 10.0
DEFAULT_KEEPALIVE_S: Final = 30
DEFAULT_SPOOL_MAX: Final = 8640  # a day of metrics at the default interval
DEFAULT_PREFIX: Final = "cluster"
DEFAULT_TEMPERATURE_SENSOR: Final = "auto"
DEFAULT_VCGENCMD: Final = "vcgencmd"
DEFAULT_LOG_LEVEL: Final = "INFO"
CONFIG_ENV: Final = "CLUSTER_CONFIG"
PASSWORD_ENV: Final = "CLUSTER_PASSWORD"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_REBOOT_COMMAND: Final = ("systemctl", "reboot")
DEFAULT_SHUTDOWN_COMMAND: Final = ("systemctl", "poweroff")

__all__ = [
    "PublisherSettings",
    "SettingsError",
    "add_settings_arguments",
    "load_settings",
    "settings_from_flags",
]


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    """Everything the node agent needs; validated on construction."""

    node_id: str
    state_dir: Path
    broker: str = DEFAULT_BROKER
    interval: float = DEFAULT_INTERVAL_S
    prefix: str = DEFAULT_PREFIX
    keepalive: int = DEFAULT_KEEPALIVE_S
    spool_max: int = DEFAULT_SPOOL_MAX
    password_file: str | None = None
    ca_file: str | None = None
    temperature_sensor: str = DEFAULT_TEMPERATURE_SENSOR
    vcgencmd: str = DEFAULT_VCGENCMD
    log_level: str = DEFAULT_LOG_LEVEL
    # Commands from the master: the dangerous ones are off unless the config turns them on.
    allow_reboot: bool = False
    allow_shutdown: bool = False
    reboot_command: tuple[str, ...] = DEFAULT_REBOOT_COMMAND
    shutdown_command: tuple[str, ...] = DEFAULT_SHUTDOWN_COMMAND
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)  # TOML [tasks.<name>] only
    # Resolved from the URL, CLUSTER_PASSWORD or password_file; never from a flag.
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            validate_node_id(self.node_id)
        except NodeIdError as error:
            raise SettingsError("node_id", str(error)) from error
        try:
            address = parse_broker_url(self.broker)
        except BrokerUrlError as error:
            raise SettingsError("broker", str(error)) from error
        if address.password is not None:
            raise SettingsError(
                "broker", "internal: the password must be split off the URL before validation"
            )
        if not math.isfinite(self.interval) or self.interval <= 0:
            raise SettingsError("interval", f"must be a number of seconds > 0, got {self.interval}")
        if self.keepalive < 1:
            raise SettingsError("keepalive", f"must be a whole number >= 1, got {self.keepalive}")
        if self.spool_max < 1:
            raise SettingsError("spool_max", f"must be a whole number >= 1, got {self.spool_max}")
        if not self.prefix or any(char in self.prefix for char in "/+#"):
            raise SettingsError("prefix", f"must be one topic level, got {self.prefix!r}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if not self.temperature_sensor:
            raise SettingsError("temperature_sensor", "must not be empty (use 'auto' or 'none')")
        for name in ("reboot_command", "shutdown_command"):
            if not getattr(self, name):
                raise SettingsError(name, "must be a non-empty argv list")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise SettingsError("ca_file", f"file {self.ca_file} does not exist")

    @property
    def address(self) -> BrokerAddress:
        """Where the broker is, with the resolved credentials (user defaults to the node id)."""
        parsed = parse_broker_url(self.broker)
        username = parsed.username
        if username is None and self.password is not None:
            username = self.node_id  # each node's broker user is named after it
        return replace(parsed, username=username, password=self.password)

    @property
    def spool_path(self) -> Path:
        """The SQLite file holding the outbox and the seq counter."""
        return self.state_dir / f"spool-{self.node_id}.sqlite3"

    @property
    def command_state_path(self) -> Path:
        """The JSON file keeping recent command ids and an interval set by command."""
        return self.state_dir / f"commands-{self.node_id}.json"


_Converter = Callable[[str], Any]

# TOML keys = field names; each has CLUSTER_<FIELD> and --field-name.
_CONVERTERS: Final[Mapping[str, _Converter]] = {
    "broker": str,
    "node_id": str,
    "interval": float,
    "prefix": str,
    "keepalive": int,
    "state_dir": str,
    "spool_max": int,
    "password_file": str,
    "ca_file": str,
    "temperature_sensor": str,
    "vcgencmd": str,
    "log_level": str.upper,
    "allow_reboot": to_bool,
    "allow_shutdown": to_bool,
    "reboot_command": shlex.split,
    "shutdown_command": shlex.split,
}
_FLAG_HELP: Final[Mapping[str, str]] = {
    "broker": "mqtt://[user:pass@]host[:port] or mqtts://... for TLS",
    "node_id": "node id (default: from the hostname)",
    "interval": "seconds between metrics samples",
    "prefix": "topic prefix",
    "keepalive": "MQTT keepalive in seconds",
    "state_dir": "directory for the spool database",
    "spool_max": "most envelopes kept while the broker is unreachable",
    "password_file": "file whose first line is the broker password",
    "ca_file": "CA certificate that signed the broker's certificate (mqtts://)",
    "temperature_sensor": "auto, none, a psutil sensor name or a file in millidegrees",
    "vcgencmd": "path of vcgencmd (Raspberry Pi throttling)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "allow_reboot": "true to obey the master's reboot command (default false)",
    "allow_shutdown": "true to obey the master's shutdown command (default false)",
    "reboot_command": "what reboot runs (default: systemctl reboot)",
    "shutdown_command": "what shutdown runs (default: systemctl poweroff)",
}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one `--field-name` flag per setting (all default to None)."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (or CLUSTER_CONFIG)")
    for name, help_text in _FLAG_HELP.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=help_text)


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> PublisherSettings:
    """Build settings from command-line flags and the environment; raise SettingsError."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_settings_arguments(parser)
    namespace, _ = parser.parse_known_args(list(argv))
    return settings_from_flags(vars(namespace), environ)


def settings_from_flags(flags: Mapping[str, Any], environ: Mapping[str, str]) -> PublisherSettings:
    """Merge defaults < file < environment < flags (flags as parsed: strings or None)."""
    config_path = flags.get("config") or environ.get(CONFIG_ENV)
    file_values = read_toml(Path(config_path)) if config_path else {}
    tasks = parse_tasks(file_values.pop("tasks", None))
    setting_flags = {name: flags.get(name) for name in _CONVERTERS}
    defaults = _defaults(environ)
    merged = layer(defaults, file_values, environ, {}, _CONVERTERS)
    for name, raw in setting_flags.items():
        if raw is not None:
            merged[name] = _convert(name, raw, f"--{name.replace('_', '-')}")
    values = {name: _coerce(name, value) for name, value in merged.items()}
    url_password = _split_password(values)
    password = url_password or environ.get(PASSWORD_ENV) or None
    if password is None and values["password_file"]:
        password = read_secret_file("password_file", values["password_file"])
    if values["node_id"] is None:
        values["node_id"] = _default_node_id()
    values["state_dir"] = Path(values["state_dir"]).expanduser()
    known = {f.name for f in fields(PublisherSettings)}
    return PublisherSettings(
        password=password, tasks=tasks, **{k: v for k, v in values.items() if k in known}
    )


def _defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        "broker": DEFAULT_BROKER,
        "node_id": None,  # from the hostname, computed only when nothing else sets it
        "interval": DEFAULT_INTERVAL_S,
        "prefix": DEFAULT_PREFIX,
        "keepalive": DEFAULT_KEEPALIVE_S,
        "state_dir": str(default_state_dir(environ)),
        "spool_max": DEFAULT_SPOOL_MAX,
        "password_file": None,
        "ca_file": None,
        "temperature_sensor": DEFAULT_TEMPERATURE_SENSOR,
        "vcgencmd": DEFAULT_VCGENCMD,
        "log_level": DEFAULT_LOG_LEVEL,
        "allow_reboot": False,
        "allow_shutdown": False,
        "reboot_command": DEFAULT_REBOOT_COMMAND,
        "shutdown_command": DEFAULT_SHUTDOWN_COMMAND,
    }


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """`/var/lib/picluster` for root, else `$XDG_STATE_HOME/picluster` or ~/.local/state."""
    if os.geteuid() == 0:
        return Path("/var/lib/picluster")
    xdg = environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "picluster"
    home = environ.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".local" / "state" / "picluster"


def _default_node_id() -> str:
    hostname = socket.gethostname()
    try:
        return node_id_from_hostname(hostname)
    except NodeIdError as error:
        raise SettingsError(
            "node_id", f"cannot derive one from hostname {hostname!r} ({error}); set --node-id"
        ) from error


def _convert(name: str, raw: str, source: str) -> Any:
    try:
        return _CONVERTERS[name](raw)
    except ValueError as error:
        raise SettingsError(name, f"{source} {raw!r} is not valid: {error}") from error


def _coerce(name: str, value: Any) -> Any:
    """Check a merged value's type (TOML may give any type) and normalise numbers."""
    if value is None:
        return None
    expected = _CONVERTERS[name]
    if expected is to_bool:
        if not isinstance(value, bool):
            raise SettingsError(name, f"must be true or false, got {value!r}")
        return value
    if expected is shlex.split:
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
            raise SettingsError(name, f"must be a list of strings (an argv), got {value!r}")
        return tuple(value)
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(name, f"must be a number, got {value!r}")
        return float(value)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(name, f"must be a whole number, got {value!r}")
        return value
    if not isinstance(value, str):
        raise SettingsError(name, f"must be a string, got {value!r}")
    return expected(value)


def _split_password(values: dict[str, Any]) -> str | None:
    """Take the password out of the broker URL, so settings and logs never carry it."""
    try:
        address = parse_broker_url(values["broker"])
    except BrokerUrlError as error:
        raise SettingsError("broker", str(error)) from error
    if address.password is None:
        return None
    scheme = "mqtts" if address.tls else "mqtt"
    user = f"{quote(address.username, safe='')}@" if address.username else ""
    host = f"[{address.host}]" if ":" in address.host else address.host
    values["broker"] = f"{scheme}://{user}{host}:{address.port}"
    return address.password


def log_level_number(settings: PublisherSettings) -> int:
    """The logging module's number for the configured level."""
    level: int = logging.getLevelName(settings.log_level)
    return level
