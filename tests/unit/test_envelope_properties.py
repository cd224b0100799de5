"""Property tests: whatever arrives, the decoder and topic parser only raise their own errors."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cluster_protocol import (
    Envelope,
    EnvelopeError,
    MessageType,
    RejectCause,
    TopicError,
    decode_envelope,
    encode_envelope,
    parse_topic,
)

TYPES = [t.value for t in MessageType] + ["future", ""]
NODES = st.sampled_from(["pi-01", "pi-02", "_master", "x"])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# orjson (the master's decoder) reads integers beyond 64 bits as floats, losing digits: the
# round trip is exact for what a node can send, 64-bit integers and finite floats.
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Objects that look like envelopes, so the checks beyond "is it an object" get exercised.
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 1.0, True, "1", None]),
        "type": st.sampled_from(TYPES) | json_values,
        "node": NODES | json_values,
        "ts": json_scalars,
        "seq": json_scalars,
        "payload": json_values,
        "extra": json_values,
    },
)


def check_decode(raw: bytes, node: str, message_type: str) -> None:
    try:
        envelope = decode_envelope(raw, node, message_type, 1.0)
    except EnvelopeError as error:
        cause: object = error.cause
    else:
        cause = None
    if cause is not None:
        assert isinstance(cause, RejectCause)
        return
    # Anything accepted can be written back out as strict JSON (the API and store rely on it).
    assert envelope.node == node
    assert envelope.type == message_type
    assert math.isfinite(envelope.ts)
    json.dumps(envelope.to_dict(), allow_nan=False).encode("utf-8")


@settings(max_examples=400)
@given(raw=st.binary(max_size=300), node=NODES, message_type=st.sampled_from(TYPES))
@example(
    raw=b'{"v":1,"type":"metrics","node":"pi-01","ts":1e400,"seq":1,"payload":{}}',
    node="pi-01",
    message_type="metrics",
)
@example(raw=b'{"type":"metrics","payload":{"x":"\\udc00"}}', node="pi-01", message_type="metrics")
def test_random_bytes_only_raise_envelope_error(raw: bytes, node: str, message_type: str) -> None:
    check_decode(raw, node, message_type)


@settings(max_examples=400)
@given(data=json_values | envelope_like, node=NODES, message_type=st.sampled_from(TYPES))
def test_random_json_only_raises_envelope_error(data: Any, node: str, message_type: str) -> None:
    check_decode(json.dumps(data).encode(), node, message_type)


@settings(max_examples=200)
@given(
    payload=wire_values,
    ts=st.floats(min_value=0, max_value=4e9),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_every_wire_value_round_trips_exactly(payload: Any, ts: float, seq: int) -> None:
    envelope = Envelope(type="future", node="pi-01", ts=ts, seq=seq, payload=payload)
    data = encode_envelope(envelope)
    decoded = decode_envelope(data, "pi-01", "future", 0.0)
    assert decoded == envelope


@settings(max_examples=400)
@given(topic=st.text(max_size=80) | st.lists(st.text(max_size=10), max_size=6).map("/".join))
def test_parse_topic_only_raises_topic_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError as error:
        cause: object = error.cause
    else:
        cause = None
    if cause is not None:
        assert isinstance(cause, RejectCause)
        return
    assert topic.startswith("cluster/")
    assert parsed.node
