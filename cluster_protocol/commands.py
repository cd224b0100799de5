"""Command and reply payloads, built and checked against COMMAND_FIELDS and REPLY_FIELDS.

The master builds a command with `build_command` and reads replies with `check_reply`; the node
reads commands with `parse_command` and answers with `build_reply`. Both sides therefore agree
on the keys and their types by construction, not by two hand-written copies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cluster_protocol.envelope import MAX_MESSAGE_BYTES
from cluster_protocol.errors import EnvelopeError
from cluster_protocol.payloads import ReplyPayload
from cluster_protocol.schemas import COMMAND_FIELDS, REPLY_FIELDS, check_fields

COMMAND_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_ID_LENGTH: Final = 128
REQUIRED_COMMAND_KEYS: Final = ("id", "expires")  # `args` may be left out: no arguments
REQUIRED_REPLY_KEYS: Final = ("id", "ok")


class CommandName(StrEnum):
    """The commands a node knows; the value is the last level of its command topic."""

    PING = "ping"
    REFRESH = "refresh"
    SET_INTERVAL = "set_interval"
    RUN = "run"
    REBOOT = "reboot"  # only where the node's config sets allow_reboot
    SHUTDOWN = "shutdown"  # only where the node's config sets allow_shutdown


ALWAYS_ACCEPTED: Final = (
    CommandName.PING,
    CommandName.REFRESH,
    CommandName.SET_INTERVAL,
    CommandName.RUN,
)
"""Commands every node obeys; the others need the node's consent (`allow_<name>`)."""

OPT_IN: Final = (CommandName.REBOOT, CommandName.SHUTDOWN)


class CommandPayloadError(ValueError):
    """A command or reply payload that breaks the contract; the message names the key.

    `command_id` is the payload's id when that much was usable, so the node can still answer.
    """

    def __init__(self, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


class CommandTooLargeError(CommandPayloadError):
    """A command whose encoded payload is over MAX_MESSAGE_BYTES; `size` is its length."""

    def __init__(self, size: int) -> None:
        super().__init__(f"command is {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
        self.size = size


@dataclass(frozen=True, slots=True)
class Command:
    """A command payload as the node reads it."""

    id: str
    args: dict[str, Any]
    expires: float


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply payload as the master reads it."""

    id: str
    ok: bool
    result: Any = None
    error: str | None = None


def is_command_name(name: str) -> bool:
    """True for a name that can be a command (a-z, 0-9, '_', starting with a letter)."""
    return COMMAND_NAME_PATTERN.match(name) is not None


def build_command(command_id: str, args: Mapping[str, Any], expires: float) -> bytes:
    """The payload of one command, encoded; CommandPayloadError when it breaks the contract."""
    payload = {"id": command_id, "args": dict(args), "expires": expires}
    _check(payload, "command", COMMAND_FIELDS, REQUIRED_COMMAND_KEYS)
    _check_id(command_id)
    try:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise CommandPayloadError(f"command args are not JSON: {error}", command_id) from error
    if len(data) > MAX_MESSAGE_BYTES:
        raise CommandTooLargeError(len(data))
    return data


def parse_command(raw: bytes) -> Command:
    """Read a command payload; CommandPayloadError (with the id when usable) when it is bad."""
    try:
        message = json.loads(raw)
    except ValueError as error:
        raise CommandPayloadError(f"command is not JSON: {error}") from error
    if not isinstance(message, dict):
        raise CommandPayloadError("command must be a JSON object")
    command_id = message.get("id")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
        raise CommandPayloadError(f"command.id must be a string of 1 to {MAX_ID_LENGTH} characters")
    try:
        _check(message, "command", COMMAND_FIELDS, REQUIRED_COMMAND_KEYS)
    except CommandPayloadError as error:
        raise CommandPayloadError(str(error), command_id) from error
    return Command(id=command_id, args=message.get("args", {}), expires=message["expires"])


def build_reply(
    command_id: str, ok: bool, result: Any = None, error: str | None = None
) -> ReplyPayload:
    """The payload of a reply; CommandPayloadError when it breaks the contract."""
    payload: ReplyPayload = {"id": command_id, "ok": ok, "result": result, "error": error}
    _check(payload, "reply", REPLY_FIELDS, REQUIRED_REPLY_KEYS)
    return payload


def check_reply(payload: object) -> Reply:
    """Read a reply payload; CommandPayloadError naming the key when it is bad."""
    if not isinstance(payload, dict):
        raise CommandPayloadError(f"reply must be a JSON object, got {type(payload).__name__}")
    _check(payload, "reply", REPLY_FIELDS, REQUIRED_REPLY_KEYS)
    return Reply(
        id=payload["id"],
        ok=payload["ok"],
        result=payload.get("result"),
        error=payload.get("error"),
    )


def _check(
    payload: Mapping[str, Any], where: str, fields: Mapping[str, str], required: tuple[str, ...]
) -> None:
    for key in required:
        if key not in payload:
            raise CommandPayloadError(f"{where}.{key} is missing")
    try:
        check_fields(where, payload, fields)
    except EnvelopeError as error:
        raise CommandPayloadError(str(error)) from error


def _check_id(command_id: str) -> None:
    if not 0 < len(command_id) <= MAX_ID_LENGTH:
        raise CommandPayloadError(f"command.id must be a string of 1 to {MAX_ID_LENGTH} characters")
