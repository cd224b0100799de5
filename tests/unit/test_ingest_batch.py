"""The batch ingest path: the same verdicts, state and history rows as the per-message path."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench import wire
from cluster_protocol import EnvelopeError, decode_envelope
from master_service.ingest.counters import IngestCounters
from master_service.ingest.fast_decode import decode_metrics
from master_service.ingest.handlers import Context
from master_service.ingest.history_rows import DERIVED, DIRECT, history_values, insert_history
from master_service.ingest.router import RawMessage, dispatch, dispatch_batch
from master_service.state import ClusterState
from master_service.storage.store import HISTORY_METRICS, Store, history_row

NOW = 1_764_300_000.0
NODE = "pi-01"


def envelope(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1,
        "type": "metrics",
        "node": NODE,
        "ts": NOW - 1,
        "seq": 3,
        "payload": copy.deepcopy(wire.METRICS_PAYLOAD),
    }
    data.update(overrides)
    return data


def encoded(data: Any) -> bytes:
    return json.dumps(data).encode()


def payload_with(**values: Any) -> dict[str, Any]:
    payload = copy.deepcopy(wire.METRICS_PAYLOAD)
    payload.update(values)
    return payload


CASES: list[bytes] = [
    encoded(envelope()),
    encoded(envelope(ts=5)),
    encoded(envelope(seq=0)),
    encoded(envelope(v=1.0)),
    encoded(envelope(v=True)),
    encoded(envelope(v=2)),
    encoded(envelope(ts=-1.0)),
    encoded(envelope(ts="1")),
    encoded(envelope(ts=True)),
    encoded(envelope(seq=-1)),
    encoded(envelope(seq=1.5)),
    encoded(envelope(seq=False)),
    encoded(envelope(node="pi-02")),
    encoded(envelope(type="status")),
    encoded(envelope(payload=[])),
    encoded(envelope(payload=payload_with(cpu_percent=True))),
    encoded(envelope(payload=payload_with(cpu_percent="5"))),
    encoded(envelope(payload=payload_with(load_1=None))),
    encoded(envelope(payload=payload_with(process_count=1.5))),
    encoded(envelope(payload=payload_with(disks={}))),
    encoded(envelope(payload=payload_with(unknown_key=object.__name__))),
    encoded({"type": "metrics", "payload": {"cpu_percent": 1.0}}),  # the original form
    encoded({k: v for k, v in envelope().items() if k != "seq"}),
    encoded(envelope(extra="kept out")),
    encoded([1, 2]),
    b"",
    b"{not json",
    b'{"v":1,"type":"metrics","node":"pi-01","ts":1e400,"seq":1,"payload":{}}',
    b'{"v":1,"type":"metrics","node":"pi-01","ts":1.0,"seq":1,"payload":{"cpu_percent":NaN}}',
    b"[" * 40 + b"]" * 40,
    b'{"v":1,"type":"metrics","node":"pi-01","ts":1.0,"seq":1,"payload":{"x":"\\ud800"}}',
]


@pytest.mark.parametrize("raw", CASES)
def test_one_pass_decoder_agrees_with_decode_envelope(raw: bytes) -> None:
    fast = decode_metrics(raw, NODE)
    try:
        slow = decode_envelope(raw, NODE, "metrics", NOW)
    except EnvelopeError:
        assert fast is None
        return
    if fast is not None:
        assert fast == (slow.ts, slow.seq, slow.payload)
        assert type(fast[0]) is float


def test_one_pass_decoder_takes_a_pi_payload() -> None:
    assert decode_metrics(encoded(envelope()), NODE) is not None


@pytest.mark.parametrize(
    "payload",
    [
        wire.METRICS_PAYLOAD,
        {"cpu_percent": 3, "memory_percent": 1.5},
        payload_with(load_1=None, temperature_celsius=None, disks=[]),
        payload_with(disks=[{"mount": "/", "percent": 40}]),
        {},
    ],
)
def test_history_values_are_the_stores_rows(payload: dict[str, Any], db_target: str) -> None:
    columns = ("node", "ts", *DIRECT, *(m.key for m in DERIVED))
    mine = dict(zip(columns, history_values("n", 2.0, payload), strict=True))
    theirs = dict(
        zip(("node", "ts", *HISTORY_METRICS), history_row("n", 2.0, payload), strict=True)
    )
    assert mine == theirs
    # Stored, an int becomes the float history_row makes of it (every history column is REAL).
    store = Store(db_target)
    insert_history(store.connection, [("n", 2.0, payload)])
    names = ("node", "ts", *HISTORY_METRICS)
    row = store.connection.execute(f"SELECT {', '.join(names)} FROM metrics_raw").fetchone()
    stored = dict(zip(names, row, strict=True))
    store.close()
    assert stored == theirs
    assert [type(v) for v in stored.values()] == [type(v) for v in theirs.values()]


def mixed_batch() -> list[RawMessage]:
    """Metrics with a duplicate, a late one, a retained one, other types and rejects."""

    def metrics(seq: int, node: str = NODE, **values: Any) -> RawMessage:
        body = envelope(seq=seq, node=node, ts=NOW - 100 + seq, payload=payload_with(**values))
        return RawMessage(f"cluster/{node}/metrics", encoded(body), False, NOW)

    status = {"v": 1, "type": "status", "node": NODE, "ts": NOW, "seq": 0}
    return [
        metrics(1),
        metrics(3, cpu_percent=30.0),
        metrics(3),  # duplicate
        RawMessage(
            f"cluster/{NODE}/status",
            encoded({**status, "payload": {"state": "online"}}),
            False,
            NOW,
        ),
        metrics(2),  # late: fills the gap
        metrics(1, node="pi-02"),
        RawMessage("cluster/pi-02/metrics", b"{broken", False, NOW),
        metrics(4, cpu_percent="high"),  # rejected: bad_payload
        RawMessage("cluster/pi-02/metrics", encoded(envelope(node="pi-02", seq=2)), True, NOW),
        metrics(5, cpu_percent=55.0),
        RawMessage("cluster/_master/status", b"{}", False, NOW),
        RawMessage("cluster/bad topic/metrics", b"{}", False, NOW),
    ]


def run(batched: bool) -> Context:
    ctx = Context(ClusterState(lambda: NOW), IngestCounters())
    ctx.reraise_handler_errors = True
    messages = mixed_batch()
    if batched:
        errors: list[Exception] = []
        dispatch_batch(messages, ctx, lambda _raw, error: errors.append(error))
        assert errors == []
    else:
        for message in messages:
            dispatch(message, ctx)
    return ctx


def test_batch_path_leaves_what_the_per_message_path_leaves() -> None:
    one, batch = run(False), run(True)
    assert batch.counters.snapshot() == one.counters.snapshot()
    assert batch.pending_history == one.pending_history
    assert batch.state.dirty == one.state.dirty
    for node in ("pi-01", "pi-02"):
        a, b = one.state.get(node), batch.state.get(node)
        assert a is not None
        assert b is not None
        assert b.record() == a.record()
    latest = batch.state.get(NODE)
    assert latest is not None
    assert latest.metrics is not None
    assert latest.metrics["cpu_percent"] == 55.0
