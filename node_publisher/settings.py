"""Node settings: one frozen dataclass, loaded from defaults < TOML file < environment < flags."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cluster_protocol import setting_rules as rules
from cluster_protocol import settings as declared
from cluster_protocol.broker_settings import BrokerClientSettings
from cluster_protocol.broker_url import BrokerAddress, parse_broker_url
from cluster_protocol.config import SettingsError
from cluster_protocol.node_id import NodeIdError, node_id_from_hostname
from cluster_protocol.settings import (
    DEFAULT_INTERVAL_S,
    setting,
)
from cluster_protocol.tags import split_tags, tag_problem
from node_publisher.tasks import TaskSpec, parse_tasks

DEFAULT_SPOOL_MAX: Final = 8640  # a day of metrics at the default interval
DEFAULT_REBOOT_COMMAND: Final = ("systemctl", "reboot")
DEFAULT_SHUTDOWN_COMMAND: Final = ("systemctl", "poweroff")

__all__ = [
    "PublisherSettings",
    "SettingsError",
    "add_settings_arguments",
    "load_settings",
    "settings_from_flags",
]


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


def default_node_id(environ: Mapping[str, str]) -> str:
    """The node id from the hostname, used only when nothing else sets one."""
    hostname = socket.gethostname()
    try:
        return node_id_from_hostname(hostname)
    except NodeIdError as error:
        raise SettingsError(
            "node_id", f"cannot derive one from hostname {hostname!r} ({error}); set --node-id"
        ) from error


def _tags_check(tags: tuple[str, ...]) -> str | None:
    """Every tag valid (`rack1`, `poe`): each is safe as one topic level."""
    return next((problem for tag in tags if (problem := tag_problem(tag))), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherSettings(BrokerClientSettings):
    """Everything the node agent needs; each field declares its TOML key, variable and flag."""

    node_id: str = setting(
        help="node id (default: from the hostname)",
        check=rules.node_id,
        default_from_env=default_node_id,
        metavar="ID",
    )
    # setting() returns a dataclasses.field(), which ruff cannot see through.
    state_dir: Path = setting(  # noqa: RUF009
        help="directory for the spool database and command state",
        default_from_env=default_state_dir,
        metavar="DIR",
    )
    interval: float = setting(
        DEFAULT_INTERVAL_S,
        help="seconds between metrics samples",
        check=rules.positive,
        metavar="SECONDS",
    )
    spool_max: int = setting(
        DEFAULT_SPOOL_MAX,
        help="most envelopes kept while the broker is unreachable",
        check=rules.positive,
        metavar="N",
    )
    temperature_sensor: str = setting(
        "auto",
        help="auto, none, a psutil sensor name or a file in millidegrees",
        check=rules.not_empty,
        metavar="SENSOR",
    )
    vcgencmd: str = setting(
        "vcgencmd", help="path of vcgencmd (Raspberry Pi throttling)", metavar="PATH"
    )
    # Commands from the master: the dangerous ones are off unless the config turns them on.
    allow_reboot: bool = setting(False, help="obey the master's reboot command")
    allow_shutdown: bool = setting(False, help="obey the master's shutdown command")
    reboot_command: tuple[str, ...] = setting(
        DEFAULT_REBOOT_COMMAND,
        help="what reboot runs (default: systemctl reboot)",
        check=rules.not_empty,
        metavar="ARGV",
    )
    shutdown_command: tuple[str, ...] = setting(
        DEFAULT_SHUTDOWN_COMMAND,
        help="what shutdown runs (default: systemctl poweroff)",
        check=rules.not_empty,
        metavar="ARGV",
    )
    tags: tuple[str, ...] = setting(
        (),
        help="this node's tags, sent in its machine details (comma-separated; --tag repeats)",
        check=_tags_check,
        normalize=split_tags,
        metavar="TAGS",
    )
    tasks: Mapping[str, TaskSpec] = setting(
        default_factory=dict,
        help="[tasks.<name>] tables: what the `run` command may start",
        file_only=True,
        from_file=parse_tasks,
    )

    def __post_init__(self) -> None:
        declared.finish(self)

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


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one `--field-name` flag per setting (all default to None)."""
    declared.add_arguments(parser, PublisherSettings)
    # `--tag rack1 --tag poe` beside the declared `--tags rack1,poe`: both add up.
    parser.add_argument(
        "--tag", dest="tag", action="append", metavar="TAG", help="one tag (repeat for more)"
    )


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> PublisherSettings:
    """Build settings from command-line flags and the environment; raise SettingsError."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_settings_arguments(parser)
    namespace, _ = parser.parse_known_args(list(argv))
    return settings_from_flags(vars(namespace), environ)


def settings_from_flags(flags: Mapping[str, Any], environ: Mapping[str, str]) -> PublisherSettings:
    """Merge defaults < file < environment < flags (flags as parsed: strings or None)."""
    repeated = flags.get("tag")
    if repeated:
        given = [flags["tags"]] if flags.get("tags") is not None else []
        flags = {**flags, "tags": ",".join([*given, *repeated])}
    return declared.load(PublisherSettings, flags, environ)
