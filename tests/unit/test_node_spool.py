"""The on-disk outbox: order, bound with a dropped count, reopen, seq persistence."""

from __future__ import annotations

import json

import pytest

from cluster_protocol import EnvelopeError, RejectCause
from node_publisher.spool import Spool


def envelope(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_entries_come_back_in_seq_order_and_go_when_acknowledged(tmp_path):
    spool = Spool(tmp_path / "s.db", max_entries=10)
    seqs = [spool.append("cluster/n1/metrics", envelope) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    pending = spool.pending(after_seq=0, limit=3)
    assert [e.seq for e in pending] == [1, 2, 3]
    assert pending[0].data == b'{"seq": 1}'
    assert pending[0].topic == "cluster/n1/metrics"
    spool.remove(2)
    assert [e.seq for e in spool.pending(0, 10)] == [1, 3, 4, 5]
    assert [e.seq for e in spool.pending(3, 10)] == [4, 5]
    assert len(spool) == 4


def test_full_spool_drops_oldest_and_counts_them_once(tmp_path):
    spool = Spool(tmp_path / "s.db", max_entries=3)
    for _ in range(5):
        spool.append("t", envelope)
    assert [e.seq for e in spool.pending(0, 10)] == [3, 4, 5]
    assert spool.take_dropped() == 2
    assert spool.take_dropped() == 0  # reported once


def test_spool_and_seq_survive_reopening(tmp_path):
    path = tmp_path / "s.db"
    spool = Spool(path, max_entries=100)
    for _ in range(3):
        spool.append("t", envelope)
    spool.remove(1)
    spool.take_seq(envelope)  # e.g. machine_details: seq 4, not spooled
    spool.close()
    reopened = Spool(path, max_entries=100)
    assert [e.seq for e in reopened.pending(0, 10)] == [2, 3]
    assert reopened.current_seq() == 4
    assert reopened.append("t", envelope) == 5


def test_a_build_that_fails_stores_nothing_and_keeps_seq(tmp_path):
    spool = Spool(tmp_path / "s.db", max_entries=10)

    def oversize(seq: int) -> bytes:
        raise EnvelopeError(RejectCause.OVERSIZE, "too big")

    with pytest.raises(EnvelopeError):
        spool.append("t", oversize)
    with pytest.raises(EnvelopeError):
        spool.take_seq(oversize)
    assert len(spool) == 0
    assert spool.current_seq() == 0
    assert spool.append("t", envelope) == 1


def test_the_envelope_is_built_with_its_own_seq(tmp_path):
    spool = Spool(tmp_path / "s.db", max_entries=10)
    spool.append("t", envelope)
    seq, data = spool.take_seq(envelope)
    assert (seq, data) == (2, b'{"seq": 2}')


def test_two_handles_on_one_file_never_hand_out_the_same_seq(tmp_path):
    # `cluster-node say` shares the running agent's state file.
    first = Spool(tmp_path / "s.db", max_entries=10)
    second = Spool(tmp_path / "s.db", max_entries=10)
    seqs = [first.append("t", envelope), second.take_seq(envelope)[0], first.append("t", envelope)]
    assert seqs == [1, 2, 3]
