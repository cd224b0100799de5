"""The wire contract: node ids, topics, the envelope round trip, every reject cause, legacy form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster_protocol import (
    MASTER_NODE_ID,
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Envelope,
    EnvelopeError,
    MessageType,
    NodeIdError,
    ParsedTopic,
    RejectCause,
    TopicError,
    command_subscription,
    command_topic,
    decode_envelope,
    encode_envelope,
    is_reserved_node_id,
    master_status_topic,
    node_id_from_hostname,
    parse_topic,
    subscription,
    topic_for,
    validate_node_id,
)

NODE = "pi-01"
RECEIVED_AT = 1_764_300_999.0
METRICS = {"cpu_percent": 12.5, "memory_total_bytes": 1024, "temperature_celsius": None}
DETAILS = {
    "hostname": "pi-01",
    "cpu_percent_used": 3.0,
    "ram": 1 << 30,
    "cpu": "arm",
    "cpu_cores": 4,
}


def envelope_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1,
        "type": "metrics",
        "node": NODE,
        "ts": 1_764_300_000.123,
        "seq": 42,
        "payload": dict(METRICS),
    }
    data.update(overrides)
    return data


def decode(raw: bytes, node: str = NODE, message_type: str = "metrics") -> Envelope:
    return decode_envelope(raw, node, message_type, RECEIVED_AT)


def raw_of(data: Any) -> bytes:
    return json.dumps(data).encode()


# -- node ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "node_id"),
    [
        ("pi-01", "pi-01"),
        ("Pi-01", "pi-01"),
        ("pi01.local", "pi01-local"),
        ("  RaspberryPi  ", "raspberrypi"),
        ("_dev", "dev"),
        ("-x_y", "x_y"),
        ("a" * 80, "a" * 63),
        ("pi 4 (lab)", "pi-4--lab-"),
    ],
)
def test_node_id_from_hostname(hostname: str, node_id: str) -> None:
    assert node_id_from_hostname(hostname) == node_id


@pytest.mark.parametrize("hostname", ["", "___", "..."])
def test_node_id_from_a_hostname_with_nothing_usable_is_refused(hostname: str) -> None:
    with pytest.raises(NodeIdError):
        node_id_from_hostname(hostname)


@pytest.mark.parametrize("node_id", ["a", "pi-01", "0", "node_7", "a" * 63])
def test_valid_node_ids(node_id: str) -> None:
    assert validate_node_id(node_id) == node_id


@pytest.mark.parametrize(
    ("node_id", "says"),
    [
        ("", "empty"),
        ("_master", "reserved"),
        ("_x", "reserved"),
        ("Pi", "must match"),
        ("-pi", "must match"),
        ("pi.01", "must match"),
        ("pi/01", "must match"),
        ("pi+", "must match"),
        ("pi#", "must match"),
        ("a" * 64, "must match"),
        ("pi 01", "must match"),
    ],
)
def test_invalid_node_ids_say_why(node_id: str, says: str) -> None:
    with pytest.raises(NodeIdError, match=says):
        validate_node_id(node_id)


def test_reserved_ids_begin_with_underscore() -> None:
    assert is_reserved_node_id(MASTER_NODE_ID)
    assert not is_reserved_node_id("pi-01")


# -- topics ---------------------------------------------------------------------------------


def test_topic_building() -> None:
    assert topic_for(NODE, MessageType.METRICS) == "cluster/pi-01/metrics"
    assert topic_for(NODE, "status", prefix="lab") == "lab/pi-01/status"
    assert command_topic(NODE, "reboot") == "cluster/pi-01/cmd/reboot"
    assert command_subscription(NODE) == "cluster/pi-01/cmd/+"
    assert master_status_topic() == "cluster/_master/status"
    assert subscription("lab") == "lab/#"


@pytest.mark.parametrize("node", ["Pi", "_x", "a/b", "", "+", "#"])
def test_topic_for_refuses_bad_nodes(node: str) -> None:
    with pytest.raises(NodeIdError):
        topic_for(node, MessageType.METRICS)


def test_topic_for_refuses_unknown_types() -> None:
    with pytest.raises(ValueError, match="bogus"):
        topic_for(NODE, "bogus")


@pytest.mark.parametrize("command", ["", "a/b", "+", "#", "x#"])
def test_command_topic_refuses_names_that_are_not_one_level(command: str) -> None:
    with pytest.raises(TopicError) as caught:
        command_topic(NODE, command)
    assert caught.value.cause == RejectCause.BAD_TOPIC


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("cluster/pi-01/metrics", ParsedTopic("pi-01", "metrics")),
        ("cluster/pi-01/status", ParsedTopic("pi-01", "status")),
        ("cluster/pi-01/whatever", ParsedTopic("pi-01", "whatever")),  # type checked later
        ("cluster/_master/status", ParsedTopic("_master", "status")),
        ("cluster/pi-01/cmd/reboot", ParsedTopic("pi-01", "cmd", "reboot")),
    ],
)
def test_parse_topic(topic: str, parsed: ParsedTopic) -> None:
    assert parse_topic(topic) == parsed


@pytest.mark.parametrize(
    ("topic", "cause"),
    [
        ("other/pi-01/metrics", RejectCause.BAD_TOPIC),
        ("cluster", RejectCause.BAD_TOPIC),
        ("cluster/pi-01", RejectCause.BAD_TOPIC),
        ("cluster/pi-01/metrics/extra", RejectCause.BAD_TOPIC),
        ("cluster/pi-01/a/b/c", RejectCause.BAD_TOPIC),
        ("cluster/pi-01/", RejectCause.BAD_TOPIC),
        ("cluster//metrics", RejectCause.BAD_NODE_ID),
        ("cluster/PI/metrics", RejectCause.BAD_NODE_ID),
        ("cluster/_evil/metrics", RejectCause.RESERVED_NODE),
        ("cluster/_evil/cmd/x", RejectCause.RESERVED_NODE),
        ("/cluster/pi-01/metrics", RejectCause.BAD_TOPIC),
    ],
)
def test_parse_topic_rejects_with_a_cause(topic: str, cause: RejectCause) -> None:
    with pytest.raises(TopicError) as caught:
        parse_topic(topic)
    assert caught.value.cause == cause
    assert topic in str(caught.value)


def test_parse_topic_with_another_prefix() -> None:
    assert parse_topic("lab/pi-01/metrics", prefix="lab").node == "pi-01"
    with pytest.raises(TopicError):
        parse_topic("cluster/pi-01/metrics", prefix="lab")


# -- envelope round trip ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "payload"),
    [
        ("metrics", METRICS),
        ("machine_details", DETAILS),
        ("status", {"state": "online"}),
        ("status", {"state": "offline"}),
        ("message", "hello, café ☕"),
        ("reply", {"id": "c1", "ok": True, "result": [1, 2], "error": None}),
    ],
)
def test_round_trip(message_type: str, payload: Any) -> None:
    envelope = Envelope(type=message_type, node=NODE, ts=1.25, seq=7, payload=payload)
    data = encode_envelope(envelope)
    assert json.loads(data) == {
        "v": SCHEMA_VERSION,
        "type": message_type,
        "node": NODE,
        "ts": 1.25,
        "seq": 7,
        "payload": payload,
    }
    assert decode(data, message_type=message_type) == envelope


def test_encoding_is_compact_utf8() -> None:
    data = encode_envelope(Envelope("message", NODE, 1.0, 1, "é"))
    assert b" " not in data
    assert "é".encode() in data


def test_integer_ts_decodes_as_float() -> None:
    envelope = decode(raw_of(envelope_dict(ts=100)))
    assert envelope.ts == 100.0
    assert isinstance(envelope.ts, float)


def test_unknown_extra_keys_are_accepted() -> None:
    data = envelope_dict(extra="x", payload={**METRICS, "future_metric_percent": 1.0})
    envelope = decode(raw_of(data))
    assert envelope.payload["future_metric_percent"] == 1.0


def test_unknown_type_decodes_without_a_schema() -> None:
    envelope = decode(raw_of(envelope_dict(type="future")), message_type="future")
    assert envelope.type == "future"


def test_encode_refuses_not_finite_and_oversize() -> None:
    with pytest.raises(EnvelopeError) as caught:
        encode_envelope(Envelope("metrics", NODE, 1.0, 1, {"x": float("nan")}))
    assert caught.value.cause == RejectCause.NOT_FINITE
    big = Envelope("message", NODE, 1.0, 1, "x" * MAX_MESSAGE_BYTES)
    with pytest.raises(EnvelopeError) as caught:
        encode_envelope(big)
    assert caught.value.cause == RejectCause.OVERSIZE
    assert len(encode_envelope(big, max_bytes=2 * MAX_MESSAGE_BYTES)) > MAX_MESSAGE_BYTES


# -- the original two-key form --------------------------------------------------------------


def test_legacy_two_key_form_takes_node_from_topic_and_ts_from_arrival() -> None:
    envelope = decode(raw_of({"type": "metrics", "payload": METRICS}))
    assert envelope == Envelope("metrics", NODE, RECEIVED_AT, None, METRICS)


def test_legacy_message_type() -> None:
    envelope = decode(raw_of({"type": "message", "payload": "hi"}), message_type="message")
    assert (envelope.payload, envelope.seq) == ("hi", None)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        ({"type": "status", "payload": METRICS}, RejectCause.TYPE_MISMATCH),
        ({"type": "metrics", "payload": METRICS, "node": "pi-02"}, RejectCause.NODE_MISMATCH),
        ({"type": "metrics", "payload": []}, RejectCause.BAD_PAYLOAD),
        ({"type": "metrics"}, RejectCause.MISSING_KEY),
        ({"payload": METRICS}, RejectCause.MISSING_KEY),
    ],
)
def test_legacy_form_is_still_checked(data: dict[str, Any], cause: RejectCause) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode(raw_of(data))
    assert caught.value.cause == cause


# -- every reject cause ---------------------------------------------------------------------

NESTED = b'{"a":' * 40 + b"1" + b"}" * 40

REJECTS: list[tuple[str, bytes, str, RejectCause]] = [
    ("empty", b"", "metrics", RejectCause.EMPTY),
    ("oversize", b'"' + b"x" * MAX_MESSAGE_BYTES + b'"', "metrics", RejectCause.OVERSIZE),
    ("not utf-8", b'{"v":1,"type":"metrics","x":"\xff\xfe"}', "metrics", RejectCause.NOT_UTF8),
    (
        "lone surrogate",
        raw_of(envelope_dict(payload={"x": "\ud800"})),
        "metrics",
        RejectCause.NOT_UTF8,
    ),
    ("not json", b"cpu=12", "metrics", RejectCause.NOT_JSON),
    ("truncated json", raw_of(envelope_dict())[:-3], "metrics", RejectCause.NOT_JSON),
    (
        "NaN",
        raw_of(envelope_dict(payload={"cpu_percent": float("nan")})),
        "metrics",
        RejectCause.NOT_FINITE,
    ),
    ("Infinity", b'{"v":1,"x":-Infinity}', "metrics", RejectCause.NOT_FINITE),
    (
        "1e400",
        raw_of(envelope_dict(ts=1.0)).replace(b"1.0", b"1e400"),
        "metrics",
        RejectCause.NOT_FINITE,
    ),
    (
        "400-digit int",
        raw_of(envelope_dict(payload={"n": 10**400})),
        "metrics",
        RejectCause.NOT_FINITE,
    ),
    ("too deep", NESTED, "metrics", RejectCause.TOO_DEEP),
    ("array", b"[1,2]", "metrics", RejectCause.NOT_OBJECT),
    ("string", b'"metrics"', "metrics", RejectCause.NOT_OBJECT),
    ("number", b"42", "metrics", RejectCause.NOT_OBJECT),
    ("null", b"null", "metrics", RejectCause.NOT_OBJECT),
    (
        "no seq",
        raw_of({k: v for k, v in envelope_dict().items() if k != "seq"}),
        "metrics",
        RejectCause.MISSING_KEY,
    ),
    (
        "no payload",
        raw_of({k: v for k, v in envelope_dict().items() if k != "payload"}),
        "metrics",
        RejectCause.MISSING_KEY,
    ),
    ("v 2", raw_of(envelope_dict(v=2)), "metrics", RejectCause.BAD_VERSION),
    ("v true", raw_of(envelope_dict(v=True)), "metrics", RejectCause.BAD_VERSION),
    ("v string", raw_of(envelope_dict(v="1")), "metrics", RejectCause.BAD_VERSION),
    ("ts string", raw_of(envelope_dict(ts="now")), "metrics", RejectCause.BAD_FIELD),
    ("ts negative", raw_of(envelope_dict(ts=-1)), "metrics", RejectCause.BAD_FIELD),
    ("ts bool", raw_of(envelope_dict(ts=True)), "metrics", RejectCause.BAD_FIELD),
    ("ts null", raw_of(envelope_dict(ts=None)), "metrics", RejectCause.BAD_FIELD),
    ("seq float", raw_of(envelope_dict(seq=1.5)), "metrics", RejectCause.BAD_FIELD),
    ("seq negative", raw_of(envelope_dict(seq=-1)), "metrics", RejectCause.BAD_FIELD),
    ("seq string", raw_of(envelope_dict(seq="42")), "metrics", RejectCause.BAD_FIELD),
    ("seq bool", raw_of(envelope_dict(seq=False)), "metrics", RejectCause.BAD_FIELD),
    ("type vs topic", raw_of(envelope_dict(type="status")), "metrics", RejectCause.TYPE_MISMATCH),
    ("type list", raw_of(envelope_dict(type=["metrics"])), "metrics", RejectCause.TYPE_MISMATCH),
    ("spoofed node", raw_of(envelope_dict(node="pi-02")), "metrics", RejectCause.NODE_MISMATCH),
    ("payload list", raw_of(envelope_dict(payload=[1])), "metrics", RejectCause.BAD_PAYLOAD),
    (
        "metric wrong type",
        raw_of(envelope_dict(payload={"cpu_percent": "high"})),
        "metrics",
        RejectCause.BAD_PAYLOAD,
    ),
    (
        "status state",
        raw_of(envelope_dict(type="status", payload={"state": "up"})),
        "status",
        RejectCause.BAD_PAYLOAD,
    ),
    (
        "status no state",
        raw_of(envelope_dict(type="status", payload={})),
        "status",
        RejectCause.BAD_PAYLOAD,
    ),
    (
        "details missing key",
        raw_of(envelope_dict(type="machine_details", payload={"hostname": "x"})),
        "machine_details",
        RejectCause.BAD_PAYLOAD,
    ),
    (
        "message not text",
        raw_of(envelope_dict(type="message", payload={"text": "hi"})),
        "message",
        RejectCause.BAD_PAYLOAD,
    ),
    (
        "reply no id",
        raw_of(envelope_dict(type="reply", payload={"ok": True})),
        "reply",
        RejectCause.BAD_PAYLOAD,
    ),
]


@pytest.mark.parametrize(
    ("raw", "message_type", "cause"),
    [case[1:] for case in REJECTS],
    ids=[case[0] for case in REJECTS],
)
def test_reject_causes(raw: bytes, message_type: str, cause: RejectCause) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode(raw, message_type=message_type)
    assert caught.value.cause == cause
    assert str(caught.value)  # a reason a person can read in the log


def test_every_envelope_reject_cause_is_covered() -> None:
    topic_only = {RejectCause.BAD_TOPIC, RejectCause.BAD_NODE_ID, RejectCause.RESERVED_NODE}
    router_only = {RejectCause.UNKNOWN_TYPE}
    covered = {case[3] for case in REJECTS}
    assert covered == set(RejectCause) - topic_only - router_only


def test_oversize_limit_is_the_whole_message_and_configurable() -> None:
    data = encode_envelope(Envelope("message", NODE, 1.0, 1, "x" * 1000))
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(data, NODE, "message", RECEIVED_AT, max_bytes=len(data) - 1)
    assert caught.value.cause == RejectCause.OVERSIZE
    assert decode_envelope(data, NODE, "message", RECEIVED_AT, max_bytes=len(data)).seq == 1


def test_nesting_up_to_the_limit_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    payload: Any = 1
    for _ in range(20):
        payload = {"a": payload}
    assert decode(raw_of(envelope_dict(payload={"deep": payload}))).payload["deep"] == payload
    text = "[" * 200
    assert decode(raw_of(envelope_dict(payload={"note": text}))).payload["note"] == text


def test_surrogate_pairs_are_fine() -> None:
    envelope = decode(raw_of(envelope_dict(payload={"note": "\U0001f600"})))
    assert envelope.payload["note"] == "\U0001f600"
