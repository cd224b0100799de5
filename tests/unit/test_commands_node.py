"""The node's command processor with a fake agent: checks, built-ins, tasks, persistence."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_protocol.commands import CommandName, check_reply
from cluster_protocol.config import SettingsError
from cluster_protocol.payloads import ReplyPayload
from node_publisher.commands import CommandProcessor, advertised_details
from node_publisher.settings import PublisherSettings, load_settings
from node_publisher.tasks import TaskArgError, parse_tasks, run_argv
from tests.unit.test_node_collectors import FakePs

NOW = 1_700_000_000.0
PY = sys.executable

CONFIG = f"""
allow_reboot = true
reboot_command = ["{PY}", "-c", "import pathlib,sys; pathlib.Path(sys.argv[1]).touch()", "MARKER"]

[tasks.greet]
command = ["{PY}", "-c", "import sys; print('hello', sys.argv[1])", "{{who}}"]
timeout_s = 10
args.who = {{ type = "string", pattern = "[a-z]+", default = "world" }}

[tasks.count]
command = ["{PY}", "-c", "import sys; print(int(sys.argv[1]) * 2)", "{{n}}"]
args.n = {{ type = "integer", min = 0, max = 100 }}

[tasks.slow]
command = ["sh", "-c", "sleep 30"]
timeout_s = 0.5

[tasks.chatty]
command = ["{PY}", "-c", "print('x' * 100000)"]
max_output_bytes = 1000

[tasks.fails]
command = ["{PY}", "-c", "import sys; sys.stderr.write('broken'); sys.exit(3)"]
"""


class FakeAgent:
    """The NodeControls a processor needs, recording what it was asked to do."""

    def __init__(self) -> None:
        self.interval = 10.0
        self.replies: list[ReplyPayload] = []
        self.refreshed = 0

    def set_interval(self, interval_s: float) -> None:
        self.interval = interval_s

    def refresh(self) -> int | None:
        self.refreshed += 1
        return 42

    def publish_reply(self, payload: ReplyPayload) -> int:
        self.replies.append(payload)
        return len(self.replies)


def node_settings(tmp_path: Path, config: str = CONFIG) -> PublisherSettings:
    path = tmp_path / "node.toml"
    path.write_text(config.replace("MARKER", str(tmp_path / "rebooted")))
    return load_settings(
        ["--node-id", "c1", "--state-dir", str(tmp_path / "state"), "--config", str(path)], {}
    )


class Harness:
    def __init__(self, settings: PublisherSettings, now: float = NOW) -> None:
        self.agent = FakeAgent()
        self.processor = CommandProcessor(settings, clock=lambda: now, ps=FakePs())
        self.processor.bind(self.agent)
        self.processor.start()
        self._ids = 0

    def send(
        self, name: str, args: Any = None, *, expires: float = NOW + 30, cid: str | None = None
    ) -> Any:
        """Send one command through the paho-facing entry point; its reply or None."""
        self._ids += 1
        command_id = cid or f"id-{self._ids}"
        before = len(self.agent.replies)
        body = {"id": command_id, "args": args or {}, "expires": expires}
        self.processor(name, json.dumps(body).encode(), False)
        assert self.processor.wait_idle(20)
        return self.agent.replies[-1] if len(self.agent.replies) > before else None

    def close(self) -> None:
        self.processor.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(node_settings(tmp_path))
    yield harness
    harness.close()


def test_ping_answers_with_the_node_time_and_uptimes(node):
    reply = node.send("ping", cid="p1")
    assert reply["id"] == "p1"
    assert reply["ok"] is True
    assert reply["error"] is None
    assert reply["result"]["time"] == NOW
    assert reply["result"]["interval_s"] == 10.0
    assert reply["result"]["agent_uptime_s"] >= 0


def test_unknown_command_gets_an_error_reply_naming_the_known_ones(node):
    reply = node.send("format_disk")
    assert reply["ok"] is False
    assert "unknown command 'format_disk'" in reply["error"]
    assert "ping" in reply["error"]


def test_arguments_a_command_does_not_take_are_an_error(node):
    assert node.send("ping", {"x": 1})["error"] == "ping takes no arguments, got x"


def test_refresh_asks_the_agent_for_details_and_a_sample(node):
    assert node.send("refresh")["result"] == {"metrics_seq": 42}
    assert node.agent.refreshed == 1


def test_a_retained_command_is_neither_run_nor_answered(node):
    body = json.dumps({"id": "r1", "args": {}, "expires": NOW + 30}).encode()
    node.processor("refresh", body, True)
    assert node.processor.wait_idle(5)
    assert node.agent.refreshed == 0
    assert node.agent.replies == []
    assert node.processor.ignored["retained"] == 1


def test_an_expired_command_is_not_run_and_the_reply_says_so(node):
    reply = node.send("refresh", expires=NOW - 5)
    assert reply["ok"] is False
    assert reply["error"] == "expired 5.0 s ago; not run"
    assert node.agent.refreshed == 0


def test_a_repeated_id_is_not_run_again_even_after_a_restart(tmp_path):
    settings = node_settings(tmp_path)
    first = Harness(settings)
    assert first.send("refresh", cid="same")["ok"] is True
    assert first.send("refresh", cid="same") is None  # no second run, no second reply
    first.close()
    second = Harness(settings)  # a restarted node reads the ids it saw
    assert second.send("refresh", cid="same") is None
    assert second.agent.refreshed == 0
    second.close()


def test_a_command_without_an_id_is_dropped_quietly(node):
    node.processor("ping", b'{"args": {}}', False)
    node.processor("ping", b"not json", False)
    assert node.processor.wait_idle(5)
    assert node.agent.replies == []
    assert node.processor.ignored["no_id"] == 2


def test_bad_expires_and_args_get_error_replies(node):
    node.processor("ping", b'{"id": "e1", "args": {}, "expires": "soon"}', False)
    node.processor("ping", json.dumps({"id": "e2", "args": [], "expires": NOW + 9}).encode(), False)
    assert node.processor.wait_idle(5)
    assert [r["error"] for r in node.agent.replies] == [
        "command.expires must be number, got str",  # the contract's COMMAND_FIELDS speaking
        "command.args must be object, got list",
    ]


def test_set_interval_applies_and_survives_a_restart(tmp_path):
    settings = node_settings(tmp_path)
    first = Harness(settings)
    reply = first.send("set_interval", {"interval_s": "2.5"})  # text from a command line
    assert reply["result"] == {"interval_s": 2.5, "previous_s": 10.0}
    assert first.agent.interval == 2.5
    first.close()
    second = Harness(settings)
    assert second.agent.interval == 2.5  # re-applied on bind
    second.close()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "set_interval needs interval_s, a number of seconds; got None"),
        ({"interval_s": 0}, "interval_s must be between 0.1 and 86400, got 0"),
        ({"interval_s": True}, "set_interval needs interval_s, a number of seconds; got True"),
        ({"interval_s": 5, "x": 1}, "set_interval: unknown argument 'x' (takes interval_s)"),
    ],
)
def test_set_interval_refuses_bad_values(node, args, error):
    reply = node.send("set_interval", args)
    assert (reply["ok"], reply["error"]) == (False, error)
    assert node.agent.interval == 10.0


def test_run_a_defined_task_with_a_checked_argument(node):
    reply = node.send("run", {"task": "greet", "args": {"who": "pi"}})
    assert reply["ok"] is True, reply
    assert reply["result"]["stdout"] == "hello pi\n"
    assert reply["result"]["exit_code"] == 0
    assert reply["result"]["truncated"] is False
    assert node.send("run", {"task": "greet"})["result"]["stdout"] == "hello world\n"
    assert node.send("run", {"task": "count", "args": {"n": "21"}})["result"]["stdout"] == "42\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"task": "rm-rf"}, "no task 'rm-rf' is defined on this node (defined: chatty, count,"),
        ({"task": "greet", "args": {"who": "; reboot"}}, "task 'greet': argument 'who' does not"),
        ({"task": "greet", "args": {"whom": "x"}}, "task 'greet': unknown argument 'whom'"),
        ({"task": "count"}, "task 'count': argument 'n' is required"),
        ({"task": "count", "args": {"n": 101}}, "task 'count': argument 'n' must be <= 100"),
        ({"task": "count", "args": {"n": "2; ls"}}, "task 'count': argument 'n' must be integer"),
        ({"command": "ls"}, "run: unknown argument 'command'"),
    ],
)
def test_run_refuses_anything_not_defined_or_not_matching(node, args, error):
    reply = node.send("run", args)
    assert reply["ok"] is False
    assert reply["error"].startswith(error), reply["error"]


def test_run_kills_a_task_past_its_time_limit(node):
    started = time.monotonic()
    reply = node.send("run", {"task": "slow"})
    assert time.monotonic() - started < 5
    assert reply["ok"] is False
    assert reply["error"] == "task 'slow' timed out after 0.5 s and was killed"
    assert reply["result"]["timed_out"] is True
    assert reply["result"]["exit_code"] is None


def test_run_bounds_the_output(node):
    reply = node.send("run", {"task": "chatty"})
    assert reply["ok"] is True
    assert len(reply["result"]["stdout"]) == 1000
    assert reply["result"]["truncated"] is True


def test_a_failing_task_reports_its_exit_code_and_output(node):
    reply = node.send("run", {"task": "fails"})
    assert reply["ok"] is False
    assert reply["error"] == "task 'fails' exited with code 3"
    assert reply["result"]["stderr"] == "broken"


def test_reboot_runs_the_configured_command_only_when_enabled(tmp_path, node):
    reply = node.send("reboot")
    assert reply["ok"] is True
    assert reply["result"]["scheduled"] == "reboot"
    assert (tmp_path / "rebooted").exists()  # the stand-in ran after the reply
    shutdown = node.send("shutdown")
    assert shutdown["ok"] is False
    assert shutdown["error"] == (
        "shutdown is not enabled on this node (set allow_shutdown = true in its config)"
    )


def test_dangerous_commands_are_off_by_default(tmp_path):
    settings = load_settings(["--node-id", "d1", "--state-dir", str(tmp_path)], {})
    assert not settings.allow_reboot
    assert not settings.allow_shutdown
    harness = Harness(settings)
    assert "reboot is not enabled" in harness.send("reboot")["error"]
    harness.close()


def test_allow_flags_come_from_the_environment_too(tmp_path):
    settings = load_settings(
        ["--node-id", "d2", "--state-dir", str(tmp_path)],
        {"CLUSTER_ALLOW_SHUTDOWN": "true", "CLUSTER_SHUTDOWN_COMMAND": "/bin/true now"},
    )
    assert settings.allow_shutdown
    assert settings.shutdown_command == ("/bin/true", "now")


def test_advertised_details_follow_the_contract(tmp_path):
    # Only keys the wire contract documents go out; once it does, the list names what is on.
    extra = advertised_details(node_settings(tmp_path))
    assert extra in (
        {},
        {
            "commands": ["ping", "refresh", "set_interval", "run", "reboot"],
            "tasks": ["chatty", "count", "fails", "greet", "slow"],
        },
    )


# -- task config and running, directly -------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "field"),
    [
        ({"x": {"command": "ls -l"}}, "tasks.x.command"),
        ({"x": {"command": []}}, "tasks.x.command"),
        ({"x": {"command": ["ls", "{path}"]}}, "tasks.x.command"),
        ({"x": {"command": ["{prog}"], "args": {"prog": {}}}}, "tasks.x.command"),
        ({"x": {"command": ["ls"], "shell": True}}, "tasks.x.shell"),
        ({"x": {"command": ["ls"], "timeout_s": 0}}, "tasks.x.timeout_s"),
        ({"x": {"command": ["ls"], "max_output_bytes": 10**6}}, "tasks.x.max_output_bytes"),
        ({"x": {"command": ["ls"], "args": {"a": {"type": "list"}}}}, "tasks.x.args.a.type"),
        ({"x": {"command": ["ls"], "args": {"a": {"pattern": "("}}}}, "tasks.x.args.a.pattern"),
        ({"Bad Name": {"command": ["ls"]}}, "tasks.Bad Name"),
    ],
)
def test_bad_task_definitions_are_refused_naming_the_key(tasks, field):
    with pytest.raises(SettingsError) as caught:
        parse_tasks(tasks)
    assert caught.value.field == field


def test_placeholders_fill_whole_argv_elements_without_a_shell():
    spec = parse_tasks({"t": {"command": ["echo", "--name={n}"], "args": {"n": {}}}})["t"]
    assert spec.build_argv({"n": "$(reboot) && x"}) == ["echo", "--name=$(reboot) && x"]
    with pytest.raises(TaskArgError):
        spec.build_argv({"n": "nul\x00byte"})


def test_run_argv_does_not_wait_for_a_grandchild_holding_the_output(tmp_path):
    started = time.monotonic()
    result = run_argv(["sh", "-c", "sleep 30 & echo started; wait"], 0.5, 100)
    assert result.timed_out
    assert result.stdout == "started\n"
    assert time.monotonic() - started < 5


def test_every_contract_command_is_known_and_every_reply_is_a_contract_reply(tmp_path):
    settings = load_settings(["--node-id", "k1", "--state-dir", str(tmp_path)], {})
    harness = Harness(settings)
    try:
        for name in CommandName:  # reboot/shutdown are refused (not enabled), not unknown
            reply = harness.send(name.value, {"no": "such argument"})
            assert "unknown command" not in reply["error"], name
        harness.send("format_disk")
        harness.processor("ping", b'{"id": "bad-expiry", "args": {}, "expires": "soon"}', False)
        assert harness.processor.wait_idle(5)
        assert len(harness.agent.replies) == len(CommandName) + 2
        for payload in harness.agent.replies:
            check_reply(payload)  # raises CommandPayloadError on a key or type off-contract
    finally:
        harness.close()
