"""Observers are isolated: one failing skips none, none runs under the lock, one writer."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cluster_protocol import Envelope, encode_envelope
from master_service.control.commands import CommandService
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.ingestor import Ingestor
from master_service.ingest.observers import Observer
from master_service.ingest.router import RawMessage
from master_service.state import ClusterState, NodeStatus
from master_service.storage.command_log import CommandLog
from master_service.storage.store import Store
from tests.support.waiting import wait_until


class Broken(Observer):
    def node_metrics(self, node: str, payload: Mapping[str, Any]) -> None:
        raise RuntimeError("observer bug")


class Recorder(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def node_metrics(self, node: str, payload: Mapping[str, Any]) -> None:
        self.seen.append((node, payload["cpu_percent"]))


class Stuck(Observer):
    """Holds the ingest thread inside its call until released (a slow publish or write)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def node_metrics(self, node: str, payload: Mapping[str, Any]) -> None:
        self.entered.set()
        self.release.wait(10)


def message(node: str, seq: int, kind: str = "metrics", payload: Any = None) -> RawMessage:
    envelope = Envelope(kind, node, 1000.0 + seq, seq, payload or {"cpu_percent": float(seq)})
    return RawMessage(f"cluster/{node}/{kind}", encode_envelope(envelope), False, time.time())


def started(tmp_path: Path, observers: list[Observer]) -> tuple[Ingestor, list[int]]:
    ctx = Context(ClusterState(time.time), IngestCounters(), observers=observers)
    ingestor = Ingestor(ctx, Store(str(tmp_path / "m.db")))
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    ingestor.start()
    return ingestor, acked


def test_a_failing_observer_skips_no_other_and_is_counted_and_logged(tmp_path, caplog):
    recorder = Recorder()
    ingestor, acked = started(tmp_path, [Broken(), recorder])
    try:
        for seq in (1, 2):
            ingestor.submit(message("ob-1", seq))
        wait_until(lambda: sum(acked) == 2, message="both messages committed")
        assert recorder.seen == [("ob-1", 1.0), ("ob-1", 2.0)]
        assert ingestor.ctx.observer_errors.snapshot() == {"Broken": 2}
        assert ingestor.ctx.counters.accepted == 2  # the samples themselves were kept
        (logged,) = [r for r in caplog.records if "observer Broken failed" in r.getMessage()]
        assert logged.exc_info is not None
    finally:
        ingestor.stop()


def test_a_slow_observer_does_not_hold_the_cluster_lock(tmp_path):
    stuck = Stuck()
    ingestor, _ = started(tmp_path, [stuck])
    try:
        ingestor.submit(message("ob-2", 1))
        assert stuck.entered.wait(5)
        views: list[Any] = []
        reader = threading.Thread(target=lambda: views.append(ingestor.ctx.state.views()))
        reader.start()
        reader.join(2)  # what an API request does meanwhile
        assert views, "the API waited for an observer"
        assert views[0][0]["node"] == "ob-2"
    finally:
        stuck.release.set()
        ingestor.stop()


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[tuple[CommandService, Ingestor, list[tuple[str, str]]]]:
    """The command service wired as in the master, with the writer connection's statements."""
    state = ClusterState(time.time)
    with state.lock:
        state.node("ob-3").status = NodeStatus.ONLINE
    store = Store(str(tmp_path / "m.db"))
    statements: list[tuple[str, str]] = []
    assert isinstance(store.connection, sqlite3.Connection)  # SQLite's trace: the statements
    store.connection.set_trace_callback(
        lambda sql: statements.append((threading.current_thread().name, sql))
    )
    ingestor = Ingestor(Context(state, IngestCounters()), store)
    sent: list[dict[str, Any]] = []
    service = CommandService(
        CommandLog(store, ingestor.write),
        lambda topic, payload, qos, retain: sent.append(json.loads(payload)),
        state,
        lambda: True,
    )
    ingestor.ctx.observers = [service]
    ingestor.start()

    # The node answers through the broker, i.e. through the ingest thread like any reply.
    def answer() -> None:
        wait_until(lambda: sent, message="the command published")
        ingestor.submit(message("ob-3", 1, "reply", {"id": sent[0]["id"], "ok": True, "result": 7}))

    answering = threading.Thread(target=answer)
    answering.start()
    yield service, ingestor, statements
    answering.join()
    ingestor.stop()
    service.close()


def test_command_log_writes_go_through_the_one_writer_thread(commands):
    service, ingestor, statements = commands
    record = service.send("ob-3", "ping", timeout_s=5)
    assert (record.status, record.result) == ("ok", 7)
    writes = [(thread, sql) for thread, sql in statements if "commands" in sql]
    assert any(sql.startswith("INSERT INTO commands") for _, sql in writes)
    assert any(sql.startswith("UPDATE commands") for _, sql in writes)
    assert {thread for thread, sql in writes if "CREATE" not in sql} == {ingestor.name}
