"""Choosing nodes, fan-out rows and the rolling logic's edges (the real thing: integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from master_service.control.commands import CommandRefusedError
from master_service.control.fanout import fan_out
from master_service.control.fleet_cli import fan_out_table, parse_timeout
from master_service.control.placement import Requirements, place, render_placement
from master_service.control.rolling import RollPlan, roll, waves
from master_service.control.selection import SelectionError, select_nodes, view_tags
from master_service.control.units import GIB
from master_service.storage.command_log import CommandRecord

VIEWS: list[dict[str, Any]] = [
    {"node": "pi-02", "tags": ["rack1", "poe"]},
    {"node": "pi-01", "tags": ["rack1"]},
    {"node": "pi-03"},  # a master without tags yet: no "tags" at all
]


def test_select_by_tag_all_or_names():
    assert select_nodes(VIEWS, tag="rack1") == ["pi-01", "pi-02"]
    assert select_nodes(VIEWS, tag="poe") == ["pi-02"]
    assert select_nodes(VIEWS, tag="gpu") == []
    assert select_nodes(VIEWS, everyone=True) == ["pi-01", "pi-02", "pi-03"]
    assert select_nodes(VIEWS, nodes=["pi-03", "pi-01", "pi-03", "nope"]) == [
        "pi-03",
        "pi-01",
        "nope",
    ]
    assert view_tags({"node": "x", "tags": None}) == []
    with pytest.raises(SelectionError):
        select_nodes(VIEWS, nodes=["pi-01"], tag="rack1")
    with pytest.raises(SelectionError):
        select_nodes(VIEWS)


def _record(node: str, status: str) -> CommandRecord:
    ok = status == "ok"
    return CommandRecord(
        id=f"id-{node}",
        node=node,
        command="ping",
        args={},
        sent_at=0.0,
        expires=1.0,
        status=status,
        result={"n": node} if ok else None,
        error=None if ok else "boom",
    )


def test_fan_out_sends_in_parallel_and_turns_refusals_into_rows():
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def send(node: str, command: str, args: Mapping[str, Any], timeout_s: float) -> CommandRecord:
        nonlocal in_flight, most
        if node == "gone":
            raise CommandRefusedError(409, "node 'gone' is offline; nothing would receive it")
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.2)
        with lock:
            in_flight -= 1
        return _record(node, {"bad": "error", "mute": "timeout"}.get(node, "ok"))

    started = time.monotonic()
    rows = fan_out(send, ["a", "gone", "bad", "mute"], "ping", {}, 3.0)
    assert time.monotonic() - started < 0.6  # not 4 x 0.2 s one after another
    assert most == 3
    assert [(r.node, r.ok, r.status) for r in rows] == [
        ("a", True, "ok"),
        ("gone", False, "refused"),
        ("bad", False, "error"),
        ("mute", False, "timeout"),
    ]
    assert rows[1].error == "node 'gone' is offline; nothing would receive it"
    assert rows[3].error == "no reply within 3 s"
    table = fan_out_table([r.to_dict() for r in rows]).splitlines()
    assert table[1].split()[:2] == ["a", "yes"]
    assert "refused: node 'gone' is offline" in table[2]


def test_timeouts_and_waves():
    assert parse_timeout("90") == 90
    assert parse_timeout("5m") == 300
    with pytest.raises(ValueError, match="must be seconds or text like"):
        parse_timeout("soon")
    with pytest.raises(ValueError, match="more than 0 seconds"):
        parse_timeout("0")
    assert waves(["a", "b", "c"], 2) == [["a", "b"], ["c"]]


class FakeMaster:
    """Nodes whose reboot follows a script of views, one step per poll."""

    def __init__(self, scripts: dict[str, list[dict[str, Any]]]) -> None:
        self.scripts = scripts
        self.rebooted: list[str] = []
        self.silenced: dict[int, str] = {}
        self.unsilenced: list[int] = []

    def send_many(
        self, nodes: Sequence[str], command: str, args: Mapping[str, Any], timeout_s: float
    ) -> list[dict[str, Any]]:
        self.rebooted.extend(nodes)
        return [{"node": node, "ok": True} for node in nodes]

    def view(self, node: str) -> Mapping[str, Any] | None:
        script = self.scripts[node]
        if node in self.rebooted and len(script) > 1:
            return script.pop(0)
        return script[0]

    def silence(self, node: str, for_s: float, comment: str) -> int | None:
        self.silenced[len(self.silenced) + 1] = node
        return len(self.silenced)

    def unsilence(self, silence_id: int) -> None:
        self.unsilenced.append(silence_id)


def _view(state: str, since: float, metrics_ts: float) -> dict[str, Any]:
    return {"state": state, "state_since": since, "metrics_ts": metrics_ts}


def test_a_restart_between_two_polls_counts_and_only_a_new_sample_brings_it_back():
    before = _view("online", 100.0, 50.0)
    master = FakeMaster(
        {
            # Never seen offline: state_since moved while it stayed online (down and up fast).
            "fast": [before, before, _view("online", 105.0, 51.0), _view("online", 105.0, 52.0)],
            "next": [
                before,
                _view("offline", 101.0, 50.0),
                _view("online", 102.0, 53.0),
                _view("online", 102.0, 54.0),
            ],
        }
    )
    lines: list[str] = []
    plan = RollPlan("reboot", {}, 1, 10.0, 5.0)
    outcome = roll(master, ["fast", "next"], plan, lines.append, sleep=lambda _: None)
    assert outcome.ok
    assert outcome.done == ["fast", "next"]
    assert "fast: down" in lines
    assert lines.index("fast: online again, waiting for a new metrics sample") < next(
        i for i, line in enumerate(lines) if line.startswith("fast: back")
    )
    assert sorted(master.unsilenced) == [1, 2]


def test_a_node_down_before_its_turn_stops_the_roll_without_touching_its_wave():
    master = FakeMaster(
        {
            "a": [_view("online", 1.0, 1.0)],
            "b": [_view("offline", 1.0, 1.0)],
            "c": [_view("online", 1.0, 1.0)],
            "d": [_view("online", 1.0, 1.0)],
        }
    )
    lines: list[str] = []
    outcome = roll(master, ["a", "b", "c", "d"], RollPlan("reboot", {}, 2, 1.0, 1.0), lines.append)
    assert outcome.failed == {"b": "was offline before its turn"}
    assert outcome.done == []
    assert master.rebooted == []  # "a" shares the wave with "b": not sent either
    assert outcome.untouched == ["a", "c", "d"]


def test_placement_with_a_tag_considers_only_the_tagged_nodes():
    def node(name: str, free_gib: float, tags: list[str] | None) -> dict[str, Any]:
        found: dict[str, Any] = {
            "node": name,
            "state": "online",
            "details": {"cpu_cores": 4, "arch": "aarch64"},
            "metrics": {"memory_available_bytes": int(free_gib * GIB), "cpu_percent": 10.0},
        }
        if tags is not None:
            found["tags"] = tags
        return found

    views = [node("big", 7, ["gpu"]), node("small", 1, ["rack1"]), node("old", 5, None)]
    answer = place(views, Requirements(min_ram_bytes=2 * GIB, tag="rack1")).to_dict()
    assert answer["chosen"] == []
    assert [r["node"] for r in answer["rejected"]] == ["small"]  # the others are not listed
    lines = render_placement(answer)
    assert lines[0] == "chosen (0 of 1 wanted among nodes tagged rack1):"
    anywhere = place(views, Requirements(min_ram_bytes=2 * GIB))
    assert [c.node for c in anywhere.chosen] == ["big"]


def test_each_node_is_unsilenced_when_it_is_back_not_when_its_wave_ends():
    before = _view("online", 1.0, 1.0)
    back = [_view("offline", 2.0, 1.0), _view("online", 3.0, 2.0), _view("online", 3.0, 3.0)]
    master = FakeMaster({"quick": [before, *back], "slow": [before, before, before, *back]})
    events: list[str] = []
    original = master.unsilence

    def unsilence(silence_id: int) -> None:
        events.append(f"unsilenced {master.silenced[silence_id]}")
        original(silence_id)

    master.unsilence = unsilence  # type: ignore[method-assign]
    plan = RollPlan("reboot", {}, 2, 10.0, 5.0)
    outcome = roll(master, ["quick", "slow"], plan, events.append, sleep=lambda _: None)
    assert outcome.done == ["quick", "slow"]
    quick_back = next(i for i, e in enumerate(events) if e.startswith("quick: back"))
    slow_back = next(i for i, e in enumerate(events) if e.startswith("slow: back"))
    assert quick_back < events.index("unsilenced quick") < slow_back
    assert events.index("unsilenced slow") > slow_back
