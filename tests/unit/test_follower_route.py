"""A follower's ingest route: what it stores, what it keeps for the leader, what it drops."""

from __future__ import annotations

import copy
import json
from typing import Any

from bench import wire
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.router import RawMessage, dispatch_batch
from master_service.peers.follower import forward_batch
from master_service.state import ClusterState

NOW = 1_764_300_000.0


def message(kind: str, seq: int, payload: Any, node: str = "pi-01") -> RawMessage:
    body = {"v": 1, "type": kind, "node": node, "ts": NOW - 1, "seq": seq, "payload": payload}
    return RawMessage(f"cluster/{node}/{kind}", json.dumps(body).encode(), False, NOW)


def metrics(seq: int) -> RawMessage:
    return message("metrics", seq, copy.deepcopy(wire.METRICS_PAYLOAD))


def context() -> Context:
    return Context(ClusterState(lambda: NOW), IngestCounters(), "cluster")


def test_metrics_are_stored_and_kept_for_the_leader_without_state() -> None:
    ctx = context()
    forward_batch([metrics(1), metrics(2)], ctx, lambda raw, error: None)
    assert [row[0] for row in ctx.pending_history] == ["pi-01", "pi-01"]
    assert [topic for topic, _, _ in ctx.forwarded] == ["cluster/pi-01/metrics"] * 2
    assert ctx.state.node_ids() == []  # the follower's state is the leader's, mirrored
    assert ctx.counters.accepted == 2


def test_replies_go_to_the_leader_and_retained_types_are_left_to_it() -> None:
    ctx = context()
    reply = message("reply", 7, {"id": "c1", "ok": True, "result": {}})
    status = message("status", 8, {"state": "online"})
    forward_batch([reply, status], ctx, lambda raw, error: None)
    assert [topic for topic, _, _ in ctx.forwarded] == ["cluster/pi-01/reply"]
    assert ctx.pending_history == []  # no history for a reply
    assert ctx.counters.ignored == 1  # the leader gets the retained status itself


def test_bad_input_is_counted_and_never_forwarded() -> None:
    ctx = context()
    broken = RawMessage("cluster/pi-01/metrics", b"{not json", False, NOW)
    unknown = message("gossip", 3, {})
    forward_batch([broken, unknown], ctx, lambda raw, error: None)
    assert ctx.forwarded == []
    assert ctx.counters.snapshot()["rejected"] == {"not_json": 1, "unknown_type": 1}


def test_the_leader_routes_what_was_forwarded_without_storing_its_history_again() -> None:
    follower = context()
    forward_batch([metrics(1), metrics(3)], follower, lambda raw, error: None)
    leader = context()
    leader.history_stored = True
    drained = [RawMessage(t, p, False, NOW) for t, p, _ in follower.forwarded]
    dispatch_batch(drained, leader, lambda raw, error: None)
    node = leader.state.get("pi-01")
    assert node is not None
    assert (node.last_seq, node.seq_gaps) == (3, 1)
    assert leader.pending_history == []
