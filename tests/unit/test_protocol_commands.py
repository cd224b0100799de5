"""Command and reply payloads: built and read through the contract's COMMAND/REPLY_FIELDS."""

from __future__ import annotations

import json

import pytest

from cluster_protocol import MAX_MESSAGE_BYTES
from cluster_protocol.commands import (
    Command,
    CommandPayloadError,
    CommandTooLargeError,
    Reply,
    build_command,
    build_reply,
    check_reply,
    is_command_name,
    parse_command,
)
from cluster_protocol.schemas import COMMAND_FIELDS, REPLY_FIELDS


def test_a_built_command_reads_back_and_has_exactly_the_contract_keys() -> None:
    data = build_command("c1", {"interval_s": 5}, 1_700_000_030.5)
    assert set(json.loads(data)) == set(COMMAND_FIELDS)
    assert parse_command(data) == Command("c1", {"interval_s": 5}, 1_700_000_030.5)


def test_a_command_without_args_means_no_arguments() -> None:
    assert parse_command(b'{"id": "c2", "expires": 5}').args == {}


@pytest.mark.parametrize(
    ("raw", "message", "command_id"),
    [
        (b"not json", "command is not JSON", None),
        (b"[1]", "command must be a JSON object", None),
        (b'{"args": {}, "expires": 1}', "command.id must be a string", None),
        (b'{"id": "", "expires": 1}', "command.id must be a string", None),
        (b'{"id": "c3", "args": {}}', "command.expires is missing", "c3"),
        (b'{"id": "c4", "expires": "soon"}', "command.expires must be number, got str", "c4"),
        (b'{"id": "c5", "expires": true}', "command.expires must be number, got bool", "c5"),
        (b'{"id": "c6", "args": [], "expires": 1}', "command.args must be object, got list", "c6"),
    ],
)
def test_a_bad_command_is_refused_naming_the_key_and_keeping_a_usable_id(
    raw: bytes, message: str, command_id: str | None
) -> None:
    with pytest.raises(CommandPayloadError) as raised:
        parse_command(raw)
    assert str(raised.value).startswith(message)
    assert raised.value.command_id == command_id


def test_build_command_refuses_what_would_not_arrive() -> None:
    with pytest.raises(CommandTooLargeError) as raised:
        build_command("c7", {"blob": "x" * MAX_MESSAGE_BYTES}, 1.0)
    assert raised.value.size > MAX_MESSAGE_BYTES
    with pytest.raises(CommandPayloadError, match="not JSON"):
        build_command("c8", {"when": float("nan")}, 1.0)
    with pytest.raises(CommandPayloadError, match=r"^command\.id"):
        build_command("", {}, 1.0)
    with pytest.raises(CommandPayloadError, match=r"^command\.expires must be number"):
        build_command("c9", {}, float("inf"))


def test_a_built_reply_reads_back_and_has_exactly_the_contract_keys() -> None:
    payload = build_reply("c1", False, {"exit_code": 3}, "task exited with code 3")
    assert set(payload) == set(REPLY_FIELDS)
    assert check_reply(payload) == Reply("c1", False, {"exit_code": 3}, "task exited with code 3")
    assert check_reply({"id": "c2", "ok": True}) == Reply("c2", True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "reply must be a JSON object"),
        ({"ok": True}, "reply.id is missing"),
        ({"id": "c1", "ok": "yes"}, "reply.ok must be boolean, got str"),
        ({"id": "c1", "ok": False, "error": 3}, "reply.error must be string or null, got int"),
    ],
)
def test_a_bad_reply_is_refused_naming_the_key(payload: object, message: str) -> None:
    with pytest.raises(CommandPayloadError) as raised:
        check_reply(payload)
    assert str(raised.value).startswith(message)
    with pytest.raises(CommandPayloadError):
        build_reply("c1", True, None, 3)  # type: ignore[arg-type]


def test_command_names_are_single_lower_case_levels() -> None:
    assert is_command_name("set_interval")
    assert not any(map(is_command_name, ["", "Ping", "a/b", "x" * 33, "1st", "cmd+"]))
