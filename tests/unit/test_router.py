"""The router alone: rejects counted by cause, duplicates dropped, failing handlers isolated."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from cluster_protocol import Envelope, MessageType, RejectCause, encode_envelope
from master_service.ingest import router
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context, Incoming
from master_service.ingest.router import HANDLERS, RawMessage, dispatch
from master_service.state import ClusterState

NOW = 1_764_300_000.0
NODE = "pi-01"


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(request: pytest.FixtureRequest) -> Context:
    """A context whose handler errors re-raise unless the test allows them."""
    allow = request.node.get_closest_marker("allow_handler_errors") is not None
    context = Context(ClusterState(lambda: NOW), IngestCounters(FakeClock()))
    context.reraise_handler_errors = not allow
    return context


def message(
    message_type: str = "metrics",
    seq: int | None = 1,
    payload: Any = None,
    node: str = NODE,
    retained: bool = False,
    ts: float = NOW - 1,
) -> RawMessage:
    if payload is None:
        payload = {"state": "online"} if message_type == "status" else {"cpu_percent": 5.0}
    data = encode_envelope(Envelope(message_type, node, ts, seq, payload))
    return RawMessage(f"cluster/{node}/{message_type}", data, retained, NOW)


def raw(topic: str, payload: bytes, retained: bool = False) -> RawMessage:
    return RawMessage(topic, payload, retained, NOW)


def test_table_covers_every_message_type() -> None:
    assert set(HANDLERS) == set(MessageType)


def test_valid_metrics_update_state(ctx: Context) -> None:
    assert dispatch(message(seq=1), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["metrics"] == {"cpu_percent": 5.0}
    assert view["counters"]["received"] == 1
    assert ctx.counters.snapshot()["accepted"] == 1
    assert ctx.pending_history == [(NODE, NOW - 1, {"cpu_percent": 5.0})]


@pytest.mark.parametrize(
    ("incoming", "cause"),
    [
        (raw("cluster/pi-01", b"{}"), RejectCause.BAD_TOPIC),
        (raw("cluster/pi-01/metrics/x", b"{}"), RejectCause.BAD_TOPIC),
        (raw("cluster/Pi/metrics", b"{}"), RejectCause.BAD_NODE_ID),
        (raw("cluster/_evil/metrics", b"{}"), RejectCause.RESERVED_NODE),
        (raw("cluster/pi-01/bogus", b"{}"), RejectCause.UNKNOWN_TYPE),
        (raw("cluster/pi-01/metrics", b"not json"), RejectCause.NOT_JSON),
        (raw("cluster/pi-01/status", b"", retained=True), RejectCause.EMPTY),
        (raw("cluster/pi-02/metrics", message().payload), RejectCause.NODE_MISMATCH),
    ],
)
def test_rejects_are_counted_by_cause_and_leave_state_alone(
    ctx: Context, incoming: RawMessage, cause: RejectCause
) -> None:
    assert not dispatch(incoming, ctx)
    snapshot = ctx.counters.snapshot()
    assert snapshot["rejected"] == {cause.value: 1}
    assert snapshot["accepted"] == 0
    assert ctx.state.node_ids() == []


def test_own_topics_are_ignored_not_rejected(ctx: Context) -> None:
    assert not dispatch(raw("cluster/pi-01/cmd/reboot", b"{}"), ctx)
    assert not dispatch(message("status", node="_master", seq=0), ctx)
    snapshot = ctx.counters.snapshot()
    assert (snapshot["ignored"], snapshot["rejected_total"]) == (2, 0)


def test_duplicates_are_dropped_and_counted_once_per_resend(ctx: Context) -> None:
    for seq in (1, 2, 2, 3, 1):
        dispatch(message(seq=seq), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["duplicates"] == 2
    assert view["counters"]["received"] == 3
    assert ctx.counters.snapshot()["duplicates"] == 2
    assert len(ctx.pending_history) == 3


DETAILS = {"hostname": "pi", "cpu_percent_used": 1.0, "ram": 1, "cpu": "x", "cpu_cores": 1}


def test_a_retained_replay_is_not_a_duplicate(ctx: Context) -> None:
    dispatch(message("machine_details", seq=5, payload=DETAILS), ctx)
    dispatch(message("machine_details", seq=5, payload=DETAILS, retained=True), ctx)
    assert ctx.counters.snapshot()["duplicates"] == 0


def test_gaps_are_counted_and_late_data_fills_them(ctx: Context) -> None:
    dispatch(message(seq=1), ctx)
    dispatch(message(seq=5), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["seq_gaps"] == 3
    dispatch(message(seq=3, ts=NOW - 100, payload={"cpu_percent": 99.0}), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["seq_gaps"] == 2
    # Late (spooled) data goes to history by its own ts but does not replace newer metrics.
    assert view["metrics"] == {"cpu_percent": 5.0}
    assert (NODE, NOW - 100, {"cpu_percent": 99.0}) in ctx.pending_history


def test_legacy_two_key_form_is_accepted(ctx: Context) -> None:
    payload = json.dumps({"type": "message", "payload": "hello"}).encode()
    assert dispatch(raw("cluster/pi-01/message", payload), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["messages"] == 1


def test_a_flood_of_one_cause_logs_one_line(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="master_service.ingest.counters")
    for _ in range(1000):
        dispatch(raw("cluster/pi-01/metrics", b"garbage"), ctx)
    dispatch(raw("cluster/pi-01/bogus", b"{}"), ctx)
    assert ctx.counters.snapshot()["rejected"] == {"not_json": 1000, "unknown_type": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "cluster/pi-01/metrics" in lines[0]
    assert "not_json" in lines[0]


def test_a_cleared_retained_message_is_counted_but_not_warned_about(
    ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    # What `nodes remove` and `forget` leave on purpose: no warning in the master's log.
    caplog.set_level(logging.INFO, logger="master_service.ingest.counters")
    dispatch(raw("cluster/pi-01/status", b"", retained=True), ctx)
    assert ctx.counters.snapshot()["rejected"] == {"empty": 1}
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "cleared retained" in record.getMessage()


def failing_message_handler(incoming: Incoming, ctx: Context) -> None:
    if incoming.envelope.payload == "boom":
        raise RuntimeError("handler bug")
    HANDLERS[MessageType.MESSAGE](incoming, ctx)


@pytest.fixture
def failing_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test-only routing table whose `message` handler raises on the text "boom"."""
    table = {**HANDLERS, MessageType.MESSAGE: failing_message_handler}
    monkeypatch.setattr(router, "HANDLERS", table)


@pytest.mark.allow_handler_errors
@pytest.mark.usefixtures("failing_route")
def test_a_failing_handler_is_logged_with_its_topic_counted_and_isolated(
    ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    assert not dispatch(message("message", seq=1, payload="boom"), ctx)
    assert dispatch(message("message", seq=2, payload="fine"), ctx)
    assert ctx.counters.snapshot()["handler_errors"] == 1
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1
    assert "cluster/pi-01/message" in failures[0].getMessage()
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["messages"] == 1


@pytest.mark.usefixtures("failing_route")
def test_handler_errors_re_raise_in_tests_unless_allowed(ctx: Context) -> None:
    with pytest.raises(RuntimeError, match="handler bug"):
        dispatch(message("message", seq=1, payload="boom"), ctx)


def test_a_will_does_not_move_last_seen(ctx: Context) -> None:
    dispatch(RawMessage("cluster/pi-01/metrics", message().payload, False, NOW - 60), ctx)
    dispatch(RawMessage("cluster/pi-01/status", message("status", 2, {"state": "offline"}).payload,
                        False, NOW), ctx)  # fmt: skip
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["state"] == "offline"
    assert view["last_seen"] == NOW - 60  # when the node was last heard, not when its will came


def test_a_birth_resent_by_a_bridge_restarts_nothing(ctx: Context) -> None:
    # A site broker's bridge resends its retained birth as a live message on every reconnect:
    # taken as a new birth, its old seq restarted the tracking and every later sample was a gap.
    birth = message("status", seq=1, ts=NOW - 100)
    details = message("machine_details", seq=2, payload=DETAILS, ts=NOW - 99)
    dispatch(birth, ctx)
    dispatch(details, ctx)
    for seq in range(3, 12):
        dispatch(message(seq=seq, ts=NOW - 100 + seq), ctx)
    for copy in (birth, details):  # the bridge's copies, retained there, live here
        dispatch(RawMessage(copy.topic, copy.payload, False, NOW + 5), ctx)
    for seq in range(12, 15):
        dispatch(message(seq=seq, ts=NOW - 100 + seq), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["seq_gaps"] == 0
    assert view["counters"]["last_seq"] == 14
    assert view["last_seen"] == NOW  # the copy says nothing about when the node was heard


def test_a_real_restart_still_restarts_the_seq(ctx: Context) -> None:
    dispatch(message("status", seq=1, ts=NOW - 100), ctx)
    for seq in range(2, 12):
        dispatch(message(seq=seq, ts=NOW - 100 + seq), ctx)
    dispatch(message("status", seq=0, ts=NOW - 10), ctx)  # a new birth: a new ts
    dispatch(message(seq=1, ts=NOW - 9), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["last_seq"] == 1
    assert view["counters"]["seq_gaps"] == 0


def test_a_birth_seen_first_as_a_retained_copy_still_restarts_the_seq(ctx: Context) -> None:
    # A node whose counter started again: its new birth may reach the master as the broker's
    # retained copy before the live one. The live one is the birth, not a replay.
    dispatch(message("status", seq=1, ts=NOW - 100), ctx)
    for seq in range(2, 51):
        dispatch(message(seq=seq, ts=NOW - 100 + seq), ctx)
    birth = message("status", seq=0, ts=NOW - 10)
    dispatch(RawMessage(birth.topic, birth.payload, True, NOW), ctx)  # retained copy first
    dispatch(birth, ctx)  # then live
    for seq in range(1, 4):
        dispatch(message(seq=seq, ts=NOW - 10 + seq), ctx)
    view = ctx.state.view(NODE)
    assert view is not None
    assert view["counters"]["last_seq"] == 3  # taken, not dropped as duplicates
    assert view["counters"]["duplicates"] == 0
