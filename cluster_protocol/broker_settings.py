"""The settings both programs share, declared once: how to reach the broker, and logging."""

from __future__ import annotations

from dataclasses import dataclass

from cluster_protocol import setting_rules as rules
from cluster_protocol.settings import (
    DEFAULT_BROKER,
    DEFAULT_KEEPALIVE_S,
    PASSWORD_IN_FILE,
    setting,
)
from cluster_protocol.topics import DEFAULT_PREFIX


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerClientSettings:
    """Broker URL, credentials, TLS CA, topic prefix, keepalive and log level.

    `MasterSettings` and `PublisherSettings` extend it, so each of these has one declaration:
    the same TOML key, `CLUSTER_<FIELD>` variable, flag, checks and error text on both sides.
    """

    broker: str = setting(
        DEFAULT_BROKER,
        help="mqtt://[user@]host[:port] or mqtts://... for TLS",
        check=rules.broker_url,
        password_of="password",
        metavar="URL",
    )
    prefix: str = setting(DEFAULT_PREFIX, help="topic prefix", check=rules.topic_level)
    keepalive: int = setting(
        DEFAULT_KEEPALIVE_S,
        help="MQTT keepalive in seconds",
        check=rules.positive,
        metavar="SECONDS",
    )
    # From the URL, CLUSTER_PASSWORD or password_file; never a flag, never in the file.
    password: str | None = setting(
        None, help="broker password", secret=True, in_file=PASSWORD_IN_FILE
    )
    password_file: str | None = setting(
        None,
        help="file whose first line is the broker password",
        secret_file_of="password",
        metavar="FILE",
    )
    ca_file: str | None = setting(
        None,
        help="CA certificate that signed the broker's certificate (mqtts://)",
        check=rules.existing_file,
        metavar="FILE",
    )
    log_level: str = setting(
        "INFO",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL",
        check=rules.log_level,
        normalize=rules.upper,
        metavar="LEVEL",
    )
