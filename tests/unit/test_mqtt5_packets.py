"""The mqtt5 ingest connection's pure parts: packet decoding, refusals, backoff, reason words."""

from __future__ import annotations

import mqtt5
import pytest

from master_service.ingest.mqtt5_connect import RECEIVE_MAXIMUM, connect_packet, reason_text
from master_service.ingest.mqtt5_listener import (
    BACKOFF_MAX_S,
    OVERRUN_FACTOR,
    PACKET_IDS,
    Mqtt5Listener,
    backoff_s,
)
from master_service.ingest.mqtt5_packets import ProtocolViolationError, decode_packets
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings

QOS1 = mqtt5.QoS.AT_LEAST_ONCE


def publish(
    topic: str,
    payload: bytes,
    packet_id: int | None = 1,
    qos: mqtt5.QoS | None = None,
    retain: bool = False,
    topic_alias: int | None = None,
) -> bytes:
    if qos is None:
        qos = QOS1 if packet_id else mqtt5.QoS.AT_MOST_ONCE
    packet = mqtt5.PublishPacket(
        topic, payload, qos=qos, packet_id=packet_id, retain=retain, topic_alias=topic_alias
    )
    return packet.write()


def test_whole_packets_are_taken_and_a_partial_one_left_for_later() -> None:
    data = (
        publish("cluster/a/metrics", b"{1}", 7)
        + mqtt5.PingRespPacket().write()
        + publish("cluster/b/metrics", b"{2}", None, retain=True)
    )
    tail = publish("cluster/c/metrics", b"{3}", 9)
    buffer = data + tail[:5]
    messages, ids, others, used = decode_packets(memoryview(buffer), len(buffer), 5.0)
    assert [(m.topic, m.payload, m.retained, m.received_at) for m in messages] == [
        ("cluster/a/metrics", b"{1}", False, 5.0),
        ("cluster/b/metrics", b"{2}", True, 5.0),
    ]
    assert ids == [7, 0]
    assert [type(p) for p in others] == [mqtt5.PingRespPacket]
    assert used == len(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", mqtt5.DisconnectReasonCode.MALFORMED_PACKET),
        (
            publish("t", b"x", 3, qos=mqtt5.QoS.EXACTLY_ONCE),
            mqtt5.DisconnectReasonCode.PROTOCOL_ERROR,
        ),
        (publish("t", b"x", 3, topic_alias=2), mqtt5.DisconnectReasonCode.TOPIC_ALIAS_INVALID),
    ],
    ids=["reserved-type", "qos2", "topic-alias"],
)
def test_what_we_must_refuse_names_its_reason_code(
    data: bytes, reason: mqtt5.DisconnectReasonCode
) -> None:
    with pytest.raises(ProtocolViolationError) as raised:
        decode_packets(memoryview(data), len(data), 0.0)
    assert raised.value.reason == reason


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, BACKOFF_MAX_S)):
        delays = {backoff_s(failures) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jittered"


def test_reason_codes_read_as_words() -> None:
    assert reason_text(mqtt5.ConnAckReasonCode.NOT_AUTHORIZED) == "Not authorized"
    assert (
        reason_text(mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD)
        == "Bad user name or password"
    )


def test_connect_asks_for_a_persistent_session_and_receive_maximum() -> None:
    settings = MasterSettings(broker="mqtt://master@127.0.0.1:1884", password="pw")
    data = connect_packet("cid", settings.broker_address, 30, 3600)
    packet, _ = mqtt5.read(memoryview(data))
    assert isinstance(packet, mqtt5.ConnectPacket)
    assert packet.clean_start is False
    assert packet.session_expiry_interval == 3600
    assert packet.keep_alive == 30
    assert packet.username == "master"
    assert packet.password == b"pw"
    assert packet.receive_max == RECEIVE_MAXIMUM
    # Written out: at 65535 (the default) mqtt5 would leave it out and Mosquitto allow 20.
    assert RECEIVE_MAXIMUM.to_bytes(2, "big") in data


def listener() -> Mqtt5Listener:
    submitted: list[list[RawMessage]] = []
    return Mqtt5Listener(MasterSettings(broker="mqtt://127.0.0.1:1884"), submitted.append)


def test_pubacks_are_released_in_order_for_the_current_connection_only() -> None:
    receiver = listener()
    message = RawMessage("cluster/a/metrics", b"{}", False, 0.0)
    receiver._connection = 1
    receiver._hand_over([message] * 3, [11, 0, 12], 1)  # QoS 1, QoS 0, QoS 1
    receiver._connection = 2  # reconnected: the broker resends what was not acknowledged
    receiver._inflight = 0
    receiver._hand_over([message], [5], 2)
    receiver.acknowledge(4)
    packets = [mqtt5.read(memoryview(p))[0] for p in receiver._outgoing]
    assert [p.packet_id for p in packets if isinstance(p, mqtt5.PubAckPacket)] == [5]
    assert receiver.in_flight == 0


def test_a_broker_overrunning_our_receive_maximum_is_taken_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Mosquitto 2.0.11 sends a few hundred past it under load: a reconnect would make it
    # resend everything in flight, so the messages are taken.
    receiver = listener()
    receiver._inflight = RECEIVE_MAXIMUM
    message = RawMessage("t", b"", False, 0.0)
    receiver._hand_over([message], [1], 0)
    receiver._hand_over([message], [2], 0)
    assert receiver.in_flight == RECEIVE_MAXIMUM + 2
    assert receiver.overruns == 1
    warnings = [r for r in caplog.records if "over our Receive Maximum" in r.getMessage()]
    assert len(warnings) == 1


def test_a_broker_ignoring_our_receive_maximum_is_refused() -> None:
    receiver = listener()
    receiver._inflight = OVERRUN_FACTOR * RECEIVE_MAXIMUM
    with pytest.raises(ProtocolViolationError) as raised:
        receiver._hand_over([RawMessage("t", b"", False, 0.0)], [1], 0)
    assert raised.value.reason == mqtt5.DisconnectReasonCode.RECEIVE_MAX_EXCEEDED


def test_an_overrun_is_never_taken_past_the_packet_ids() -> None:
    # Past 65,535 in flight the broker must reuse an id still unacknowledged, and a PUBACK
    # could then release the wrong message.
    submitted: list[list[RawMessage]] = []
    receiver = Mqtt5Listener(
        MasterSettings(broker="mqtt://127.0.0.1:1884"), submitted.append, receive_maximum=60_000
    )
    receiver._inflight = PACKET_IDS
    with pytest.raises(ProtocolViolationError):
        receiver._hand_over([RawMessage("t", b"", False, 0.0)], [1], 0)
