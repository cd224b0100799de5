"""The seq baseline: a gap is an envelope meant for the master that never came.

Gaps are counted only between envelopes received live. A retained copy (the broker's replay
of a node's last details on subscribe) may predate the master, so it starts nothing; a node's
spool, sent after its birth details, may hold seqs below the first live one.
"""

from __future__ import annotations

from typing import Any

from cluster_protocol import Envelope, encode_envelope
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.router import RawMessage, dispatch
from master_service.state import MAX_TRACKED_MISSING, ClusterState, NodeState, SeqVerdict

NOW = 1_764_300_000.0
DETAILS = {"hostname": "pi", "cpu_percent_used": 1.0, "ram": 1, "cpu": "x", "cpu_cores": 1}


def test_a_retained_copy_is_no_baseline() -> None:
    node = NodeState("pi")
    # The master subscribes 6 s after the node started: details from seq 1, then seq 14 live.
    assert node.observe_seq(1, retained=True) == SeqVerdict.NEW
    assert node.record()["last_seq"] is None
    assert [node.observe_seq(s) for s in (14, 15, 16)] == [SeqVerdict.NEW] * 3
    assert (node.seq_gaps, node.last_seq, node.missing) == (0, 16, frozenset())


def test_a_retained_copy_arriving_after_the_first_live_envelope_is_still_applied() -> None:
    node = NodeState("pi")
    node.observe_seq(14)
    assert node.observe_seq(1, retained=True) == SeqVerdict.NEW
    assert (node.seq_gaps, node.last_seq, node.seq_floor) == (0, 14, 14)


def test_a_retained_copy_of_one_received_live_is_a_duplicate() -> None:
    node = NodeState("pi")
    for seq in (5, 6, 7):
        node.observe_seq(seq)
    assert node.observe_seq(6, retained=True) == SeqVerdict.DUPLICATE
    assert node.seq_gaps == 0


def test_a_retained_copy_newer_than_the_stream_moves_nothing() -> None:
    # A restarted master: the queue of its session and the retained replay both hold seq 9.
    node = NodeState("pi", last_seq=5, seq_base=1, seq_floor=1)
    assert node.observe_seq(9, retained=True) == SeqVerdict.NEW
    assert node.last_seq == 5
    assert [node.observe_seq(s) for s in (6, 7, 8)] == [SeqVerdict.NEW] * 3
    assert node.seq_gaps == 0, "queued envelopes below the retained one are not duplicates"


def test_a_retained_copy_fills_the_gap_it_was_missing_from() -> None:
    node = NodeState("pi")
    node.observe_seq(1)
    node.observe_seq(3)
    assert node.seq_gaps == 1
    assert node.observe_seq(2, retained=True) == SeqVerdict.LATE
    assert (node.seq_gaps, node.missing) == (0, frozenset())


def test_a_real_gap_between_live_envelopes_is_counted() -> None:
    node = NodeState("pi")
    node.observe_seq(1, retained=True)
    for seq in (20, 21, 23, 24):  # 22 was meant for the master and never came
        node.observe_seq(seq)
    assert (node.seq_gaps, node.missing) == (1, {22})
    assert node.observe_seq(22) == SeqVerdict.LATE
    assert node.seq_gaps == 0


def test_a_spool_sent_after_the_birth_details_is_received_not_dropped() -> None:
    node = NodeState("pi")
    # Back from an outage with seqs 4..9 spooled: birth details take 10 and go out first.
    node.observe_seq(10)
    verdicts = [node.observe_seq(s) for s in range(4, 10)]
    assert verdicts == [SeqVerdict.LATE] * 6
    assert (node.seq_gaps, node.missing, node.seq_floor) == (0, frozenset(), 4)
    assert node.observe_seq(7) == SeqVerdict.DUPLICATE  # the outbox resends after a reconnect
    assert node.observe_seq(11) == SeqVerdict.NEW
    assert node.seq_gaps == 0


def test_a_hole_below_the_first_live_envelope_is_not_a_gap() -> None:
    # Seq 5 may have gone to the broker before the master existed: not known to be lost.
    node = NodeState("pi")
    node.observe_seq(10)
    node.observe_seq(4)
    node.observe_seq(6)
    assert node.seq_gaps == 0
    assert node.observe_seq(5) == SeqVerdict.LATE
    assert node.seq_gaps == 0


def test_a_gap_above_the_base_still_counts_with_a_spool_below_it() -> None:
    node = NodeState("pi")
    node.observe_seq(10)
    node.observe_seq(8)  # spooled, below the base
    node.observe_seq(12)  # 11 lost above the base
    assert node.seq_gaps == 1
    node.observe_seq(9)
    assert node.seq_gaps == 1
    node.observe_seq(11)
    assert (node.seq_gaps, node.missing) == (0, frozenset())


def test_a_node_restart_counts_from_its_next_live_envelope() -> None:
    node = NodeState("pi")
    for seq in (1, 2, 5):
        node.observe_seq(seq)
    assert node.seq_gaps == 2
    node.restart_seq(6)  # new SD card: birth says 6, its spool holds 1..6
    assert node.record()["last_seq"] is None
    assert node.missing == frozenset()
    assert node.observe_seq(7) == SeqVerdict.NEW  # birth details
    assert [node.observe_seq(s) for s in range(1, 7)] == [SeqVerdict.LATE] * 6
    assert node.seq_gaps == 2, "the old run's loss stays counted, the new run adds none"


def test_a_huge_spool_below_the_base_is_tracked_within_the_bound() -> None:
    node = NodeState("pi")
    node.observe_seq(MAX_TRACKED_MISSING * 3)
    node.observe_seq(1)
    assert len(node.missing) == MAX_TRACKED_MISSING
    assert node.seq_gaps == 0


def test_the_baseline_survives_a_master_restart() -> None:
    node = NodeState("pi")
    node.observe_seq(10)
    node.observe_seq(8)
    restored = NodeState(**node.record())
    assert (restored.seq_base, restored.seq_floor, restored.missing) == (10, 8, {9})
    assert restored.observe_seq(9) == SeqVerdict.LATE
    assert restored.observe_seq(8) == SeqVerdict.DUPLICATE
    assert restored.seq_gaps == 0


def test_a_record_saved_before_the_baseline_existed_keeps_its_meaning() -> None:
    record: dict[str, Any] = NodeState("pi", last_seq=10, missing=[7], seq_gaps=1).record()
    del record["seq_base"], record["seq_floor"]
    node = NodeState(**record)
    assert node.observe_seq(3) == SeqVerdict.DUPLICATE
    assert node.observe_seq(3, retained=True) == SeqVerdict.DUPLICATE
    assert node.observe_seq(7) == SeqVerdict.LATE
    assert node.seq_gaps == 0


def _raw(message_type: str, seq: int, payload: Any, retained: bool = False) -> RawMessage:
    data = encode_envelope(Envelope(message_type, "pi", NOW - 1, seq, payload))
    return RawMessage(f"cluster/pi/{message_type}", data, retained, NOW)


def test_the_api_counts_no_gap_for_a_node_older_than_the_master() -> None:
    ctx = Context(ClusterState(lambda: NOW), IngestCounters(lambda: NOW))
    ctx.reraise_handler_errors = True
    assert dispatch(_raw("status", 13, {"state": "online"}, retained=True), ctx)
    assert dispatch(_raw("machine_details", 1, DETAILS, retained=True), ctx)
    for seq in (14, 15, 16):
        assert dispatch(_raw("metrics", seq, {"cpu_percent": 5.0}), ctx)
    view = ctx.state.view("pi")
    assert view is not None
    assert view["details"] == DETAILS
    assert view["counters"]["seq_gaps"] == 0
    assert view["counters"]["last_seq"] == 16
