"""Per-node state: seq accounting (new, late, duplicate, restart) and online/stale/offline."""

from __future__ import annotations

from typing import cast

import pytest

from cluster_protocol.payloads import MachineDetails
from master_service.state import (
    MAX_TRACKED_MISSING,
    ClusterState,
    NodeState,
    NodeStatus,
    SeqVerdict,
)


def test_first_seq_is_new_whatever_its_value() -> None:
    node = NodeState("pi")
    assert node.observe_seq(1000) == SeqVerdict.NEW
    assert (node.last_seq, node.seq_gaps) == (1000, 0)


def test_in_order_stream_has_no_gaps() -> None:
    node = NodeState("pi")
    assert [node.observe_seq(s) for s in range(1, 6)] == [SeqVerdict.NEW] * 5
    assert node.seq_gaps == 0


def test_gap_then_late_fill_then_duplicate() -> None:
    node = NodeState("pi")
    node.observe_seq(1)
    assert node.observe_seq(4) == SeqVerdict.NEW
    assert (node.seq_gaps, node.missing) == (2, {2, 3})
    assert node.observe_seq(3) == SeqVerdict.LATE
    assert node.observe_seq(3) == SeqVerdict.DUPLICATE
    assert node.observe_seq(4) == SeqVerdict.DUPLICATE
    assert node.observe_seq(2) == SeqVerdict.LATE
    assert (node.seq_gaps, node.missing) == (0, set())


def test_huge_gap_is_counted_but_tracking_is_bounded() -> None:
    node = NodeState("pi")
    node.observe_seq(0)
    node.observe_seq(MAX_TRACKED_MISSING * 3)
    assert node.seq_gaps == MAX_TRACKED_MISSING * 3 - 1
    assert len(node.missing) == MAX_TRACKED_MISSING


def test_restart_starts_tracking_again() -> None:
    node = NodeState("pi")
    node.observe_seq(1)
    node.observe_seq(10)
    node.restart_seq(0)
    assert node.missing == set()
    assert node.last_seq is None  # the next envelope received live is the new baseline
    assert node.observe_seq(1) == SeqVerdict.NEW
    assert node.observe_seq(2) == SeqVerdict.NEW
    assert node.seq_gaps == 8  # what the old run lost stays counted


@pytest.mark.parametrize(
    ("status", "silent_for", "expected"),
    [
        ("online", 5.0, NodeStatus.ONLINE),
        ("online", 31.0, NodeStatus.STALE),
        ("offline", 1.0, NodeStatus.OFFLINE),
        ("unknown", 1.0, NodeStatus.ONLINE),  # the original design never sends status
        ("unknown", 31.0, NodeStatus.UNKNOWN),
    ],
)
def test_effective_status(status: str, silent_for: float, expected: NodeStatus) -> None:
    node = NodeState("pi", status=status, last_heard=100.0)
    assert node.effective_status(100.0 + silent_for, stale_factor=3.0) == expected


def test_stale_follows_the_nodes_interval() -> None:
    node = NodeState(
        "pi", status="online", last_heard=0.0, details=cast(MachineDetails, {"interval_s": 1})
    )
    assert node.effective_status(2.9, 3.0) == NodeStatus.ONLINE
    assert node.effective_status(3.1, 3.0) == NodeStatus.STALE


def test_cluster_views_and_forget() -> None:
    clock_now = [1000.0]
    cluster = ClusterState(lambda: clock_now[0])
    with cluster.lock:
        cluster.node("b").status = "online"
        cluster.node("a")
    assert cluster.node_ids() == ["a", "b"]
    assert [v["node"] for v in cluster.views()] == ["a", "b"]
    assert cluster.view("zzz") is None
    assert cluster.forget("a")
    assert not cluster.forget("a")
    assert cluster.node_ids() == ["b"]
