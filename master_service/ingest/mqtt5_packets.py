"""Decode the broker's packets from the ingest connection's read buffer, refusing what we must."""

from __future__ import annotations

import logging
from typing import Final

import mqtt5

from master_service.ingest.router import RawMessage

logger = logging.getLogger(__name__)

Reason = mqtt5.DisconnectReasonCode
FATAL: Final = (KeyboardInterrupt, SystemExit, GeneratorExit)


class ProtocolViolationError(Exception):
    """The broker sent something we must not accept: close with `reason` and reconnect."""

    def __init__(self, reason: mqtt5.DisconnectReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def decode_packets(
    view: memoryview, end: int, received_at: float
) -> tuple[list[RawMessage], list[int], list[mqtt5.Packet], int]:
    """Every whole packet in view[:end]: (messages, their packet ids, other packets, bytes used).

    A QoS 0 message gets packet id 0 (nothing to acknowledge). Raises ProtocolViolationError
    for a malformed packet, a QoS 2 PUBLISH (we subscribe at QoS 1) or a topic alias (we
    allow none).
    """
    position = 0
    read = mqtt5.read
    publish = mqtt5.PublishPacket
    messages: list[RawMessage] = []
    ids: list[int] = []
    others: list[mqtt5.Packet] = []
    while position < end:
        try:
            packet, size = read(view[position:end])
        except IndexError:
            break  # the rest of this packet is still on its way
        except FATAL:
            raise
        except BaseException as error:
            # mqtt5 0.8 raises ValueError for most malformed packets, but a PUBLISH whose
            # topic is not UTF-8 ends in a pyo3 PanicException (a BaseException).
            raise ProtocolViolationError(
                Reason.MALFORMED_PACKET, f"malformed packet: {error!r}"
            ) from error
        position += size
        if type(packet) is not publish:
            others.append(packet)
            continue
        qos = packet.qos
        if qos == mqtt5.QoS.EXACTLY_ONCE:
            raise ProtocolViolationError(
                Reason.PROTOCOL_ERROR, "a QoS 2 PUBLISH on a QoS 1 subscription"
            )
        if packet.topic_alias is not None:
            raise ProtocolViolationError(Reason.TOPIC_ALIAS_INVALID, "a topic alias")
        ids.append((packet.packet_id or 0) if qos else 0)
        messages.append(RawMessage(packet.topic, packet.payload, packet.retain, received_at))
    return messages, ids, others, position
