"""Topic names: build and parse `<prefix>/<node_id>/<type>` and `<prefix>/<node_id>/cmd/<name>`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cluster_protocol.errors import RejectCause
from cluster_protocol.node_id import MASTER_NODE_ID, NodeIdError, validate_node_id

DEFAULT_PREFIX: Final = "cluster"
COMMAND_LEVEL: Final = "cmd"


class MessageType(StrEnum):
    """Every message type on the wire; the value is the topic's last level."""

    STATUS = "status"  # birth and will, retained
    MACHINE_DETAILS = "machine_details"  # static details, retained
    METRICS = "metrics"  # periodic, not retained
    MESSAGE = "message"  # free text
    REPLY = "reply"  # answer to a command


class TopicError(ValueError):
    """A topic that is not one of ours; `cause` is a short machine-readable reason."""

    def __init__(self, cause: RejectCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic split into its parts; `command` is set only for command topics."""

    node: str
    type: str
    command: str | None = None


def subscription(prefix: str = DEFAULT_PREFIX) -> str:
    """The wildcard that matches every picluster topic under a prefix."""
    return f"{prefix}/#"


def topic_for(node: str, message_type: MessageType | str, prefix: str = DEFAULT_PREFIX) -> str:
    """Build the topic a node publishes one message type on."""
    if node != MASTER_NODE_ID:
        validate_node_id(node)
    return f"{prefix}/{node}/{MessageType(message_type).value}"


def command_topic(node: str, command: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Build the topic the master sends one command to a node on."""
    validate_node_id(node)
    if not command or "/" in command or "+" in command or "#" in command:
        raise TopicError(
            RejectCause.BAD_TOPIC, f"command name {command!r} is not a single topic level"
        )
    return f"{prefix}/{node}/{COMMAND_LEVEL}/{command}"


def command_subscription(node: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The wildcard a node subscribes to for its own commands."""
    validate_node_id(node)
    return f"{prefix}/{node}/{COMMAND_LEVEL}/+"


def master_topic(level: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A topic of the master itself, `<prefix>/_master/<level>` (status, cluster summary...)."""
    if not level or "/" in level or "+" in level or "#" in level:
        raise TopicError(RejectCause.BAD_TOPIC, f"master topic level {level!r} is not one level")
    return f"{prefix}/{MASTER_NODE_ID}/{level}"


def master_status_topic(prefix: str = DEFAULT_PREFIX) -> str:
    """The master's own retained status topic."""
    return master_topic(MessageType.STATUS.value, prefix)


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> ParsedTopic:
    """Split a topic into node, type and command; raise TopicError when it is not ours."""
    levels = topic.split("/")
    if levels[0] != prefix:
        raise TopicError(RejectCause.BAD_TOPIC, f"topic {topic!r} is not under {prefix!r}")
    if len(levels) == 4 and levels[2] == COMMAND_LEVEL:
        node, command = levels[1], levels[3]
        _check_node(topic, node)
        return ParsedTopic(node=node, type=COMMAND_LEVEL, command=command)
    if len(levels) != 3:
        raise TopicError(
            RejectCause.BAD_TOPIC,
            f"topic {topic!r} has {len(levels)} levels; expected {prefix}/<node>/<type>",
        )
    node, message_type = levels[1], levels[2]
    if node != MASTER_NODE_ID:
        _check_node(topic, node)
    if not message_type:
        raise TopicError(RejectCause.BAD_TOPIC, f"topic {topic!r} has an empty type level")
    return ParsedTopic(node=node, type=message_type)


def _check_node(topic: str, node: str) -> None:
    try:
        validate_node_id(node)
    except NodeIdError as error:
        cause = RejectCause.RESERVED_NODE if node.startswith("_") else RejectCause.BAD_NODE_ID
        raise TopicError(cause, f"topic {topic!r}: {error}") from error
