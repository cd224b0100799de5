"""An unwritable store (disk full, locked) keeps the batch, acknowledges nothing, retries."""

from __future__ import annotations

import sqlite3
import time

import pytest

from cluster_protocol import Envelope, encode_envelope
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.ingestor import Ingestor
from master_service.ingest.router import RawMessage
from master_service.state import ClusterState
from master_service.storage.store import Store


class FailingStore(Store):
    """A real SQLite store whose commits fail while `failures` is above zero."""

    failures = 0

    def commit(self) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().commit()


def metrics(node: str, seq: int) -> RawMessage:
    envelope = Envelope("metrics", node, 1000.0 + seq, seq, {"cpu_percent": float(seq)})
    return RawMessage(f"cluster/{node}/metrics", encode_envelope(envelope), False, time.time())


def test_a_failed_flush_keeps_its_rows_and_acknowledges_only_after_the_retry(db_target, caplog):
    store = FailingStore(db_target)
    ctx = Context(ClusterState(time.time), IngestCounters())
    ingestor = Ingestor(ctx, store)
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    for seq in range(3):
        ingestor._handle(metrics("sf-1", seq))
    store.failures = 2
    ingestor.flush()
    ingestor.flush()
    assert acked == []  # nothing acknowledged while the store refuses
    assert ingestor.store_errors == 2
    assert ingestor.store_error == "database or disk is full"
    assert len(caplog.records) == 1  # one error line per outage, not per flush
    ingestor.flush()
    assert acked == [3]
    assert ingestor.store_error is None
    rows = store.connection.execute("SELECT ts FROM metrics_raw ORDER BY ts").fetchall()
    assert [ts for (ts,) in rows] == [1000.0, 1001.0, 1002.0]  # none lost, none twice
    saved = {state.node: state for state in store.load_nodes()}
    store.close()
    assert saved["sf-1"].last_seq == 2


@pytest.fixture(autouse=True)
def _errors_only(caplog):
    caplog.set_level("ERROR", logger="master_service.ingest.ingestor")
