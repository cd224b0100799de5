"""ClusterState's encoded listing: rebuilt per commit generation and when a state turns by time."""

from __future__ import annotations

import json
from typing import Any

import orjson

from cluster_protocol.payloads import MachineDetails, MetricsPayload
from master_service.state import ClusterState

DETAILS: MachineDetails = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "ram": 4 * 1024**3,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "interval_s": 10,
    "tags": ["poe"],
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heard(state: ClusterState, node_id: str, cpu: float, tags: list[str] | None = None) -> None:
    """What ingest does for a node's details and metrics (without the commit)."""
    with state.lock:
        node = state.node(node_id)
        node.status = "online"
        node.last_heard = state.clock()
        node.details = {**DETAILS, "tags": tags or []}
        metrics: MetricsPayload = {"cpu_percent": cpu, "disks": [{"mount": "/", "percent": 5.0}]}  # type: ignore[typeddict-item]
        node.metrics = metrics
        node.received += 1


def listed(state: ClusterState, tags: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    nodes: list[dict[str, Any]] = json.loads(state.nodes_json(tags))
    return {view["node"]: view for view in nodes}


def test_the_listing_is_what_views_shows_with_nothing_decoded_again():
    state = ClusterState(Clock(1000.0))
    heard(state, "pi-02", 20.0, ["rack1"])
    heard(state, "pi-01", 10.0)
    state.set_master_tags("pi-01", ["rack1"])

    assert json.loads(state.nodes_json()) == json.loads(orjson.dumps(state.views()))
    single = state.node_json("pi-01")
    assert single is not None
    assert json.loads(single) == state.view("pi-01")
    assert state.node_json("pi-09") is None


def test_a_change_shows_once_committed_not_before():
    state = ClusterState(Clock(1000.0))
    heard(state, "pi-01", 10.0)
    state.committed()
    assert listed(state)["pi-01"]["metrics"]["cpu_percent"] == 10.0

    heard(state, "pi-01", 55.0)  # handled, not yet committed: the listing is the last commit's
    assert listed(state)["pi-01"]["metrics"]["cpu_percent"] == 10.0
    single = state.node_json("pi-01")  # one node is read live
    assert single is not None
    assert json.loads(single)["metrics"]["cpu_percent"] == 55.0

    state.committed()
    assert listed(state)["pi-01"]["metrics"]["cpu_percent"] == 55.0


def test_tags_filter_the_listing_and_master_tags_show_at_once():
    state = ClusterState(Clock(1000.0))
    heard(state, "pi-01", 10.0, ["rack1", "poe"])
    heard(state, "pi-02", 20.0, ["rack1"])
    heard(state, "pi-03", 30.0)
    state.committed()
    assert set(listed(state, ("rack1",))) == {"pi-01", "pi-02"}
    assert set(listed(state, ("rack1", "poe"))) == {"pi-01"}
    assert listed(state, ("nowhere",)) == {}

    state.set_master_tags("pi-03", ["rack1"])  # through the API: no flush in between
    assert set(listed(state, ("rack1",))) == {"pi-01", "pi-02", "pi-03"}
    assert listed(state)["pi-03"]["master_tags"] == ["rack1"]


def test_a_forgotten_node_leaves_the_listing_at_once():
    state = ClusterState(Clock(1000.0))
    heard(state, "pi-01", 10.0)
    heard(state, "pi-02", 20.0)
    state.committed()
    assert set(listed(state)) == {"pi-01", "pi-02"}

    state.forget("pi-01")
    assert set(listed(state)) == {"pi-02"}


def test_a_silent_node_turns_stale_in_the_listing_without_any_commit():
    clock = Clock(1000.0)
    state = ClusterState(clock, stale_factor=3.0)
    heard(state, "pi-01", 10.0)
    state.committed()
    assert listed(state)["pi-01"]["state"] == "online"

    clock.now += 30.0  # exactly 3 intervals: still online
    assert listed(state)["pi-01"]["state"] == "online"
    clock.now += 0.5
    assert listed(state)["pi-01"]["state"] == "stale"
