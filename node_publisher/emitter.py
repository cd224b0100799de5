"""How the node's messages leave: envelopes numbered by the spool, sent in order or retained."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeAlias

from cluster_protocol import Envelope, EnvelopeError, MessageType, encode_envelope, topic_for
from cluster_protocol.payloads import (
    MachineDetails,
    MetricsPayload,
    NodeLifecycle,
    ReplyPayload,
    StatusPayload,
)
from node_publisher.lean_imports import mqtt
from node_publisher.outbox import Outbox
from node_publisher.spool import Spool

logger = logging.getLogger(__name__)

# What a node sends; `str` is the free-text `message`.
NodePayload: TypeAlias = MetricsPayload | MachineDetails | StatusPayload | ReplyPayload | str


class Emitter:
    """Builds one node's envelopes and sends them the way each type needs.

    Metrics, messages and replies go through the spool (kept across outages, sent in order by
    the outbox); status and details are published retained.
    """

    def __init__(
        self,
        node: str,
        prefix: str,
        spool: Spool,
        client: mqtt.Client,
        outbox: Outbox,
        clock: Callable[[], float],
    ) -> None:
        self.node = node
        self.prefix = prefix
        self.spool = spool
        self.client = client
        self.outbox = outbox
        self.clock = clock
        self.oversize = 0  # envelopes refused for being over the size limit
        self._topics: dict[MessageType, str] = {}

    def topic(self, message_type: MessageType) -> str:
        """This node's topic for one message type."""
        topic = self._topics.get(message_type)
        if topic is None:  # checked and built once per type, not per sample
            topic = self._topics[message_type] = topic_for(self.node, message_type, self.prefix)
        return topic

    def spool_envelope(
        self, message_type: MessageType, payload: NodePayload, raise_errors: bool = False
    ) -> int | None:
        """Spool one envelope for the outbox; its seq, or None when it is oversize."""
        ts = self.clock()

        def build(seq: int) -> bytes:
            return encode_envelope(Envelope(message_type, self.node, ts, seq, payload))

        try:
            seq = self.spool.append(self.topic(message_type), build)
        except EnvelopeError as error:
            self.oversize += 1
            logger.error("not sending %s: %s", message_type, error)
            if raise_errors:
                raise
            return None
        self.outbox.wake()
        return seq

    def status_payload(self, state: NodeLifecycle) -> bytes:
        """A status envelope, carrying the current seq without taking one.

        A will may never be sent: taking a seq for it would leave a gap.
        """
        envelope = Envelope(
            type=MessageType.STATUS,
            node=self.node,
            ts=self.clock(),
            seq=self.spool.current_seq(),
            payload=StatusPayload(state=state),
        )
        return encode_envelope(envelope)

    def publish_status(self, state: NodeLifecycle) -> mqtt.MQTTMessageInfo:
        """Publish "online" or "offline", retained."""
        data = self.status_payload(state)
        return self.client.publish(self.topic(MessageType.STATUS), data, 1, True)

    def set_will(self) -> None:
        """Leave a retained "offline" with the broker, sent if the node vanishes."""
        self.client.will_set(
            self.topic(MessageType.STATUS), self.status_payload("offline"), qos=1, retain=True
        )

    def publish_details(self, details: MachineDetails | None) -> None:
        """Publish the machine details, retained, with a seq of their own."""
        if details is None:
            return
        ts = self.clock()

        def build(seq: int) -> bytes:
            return encode_envelope(
                Envelope(MessageType.MACHINE_DETAILS, self.node, ts, seq, details)
            )

        try:
            _, data = self.spool.take_seq(build)
        except EnvelopeError as error:
            self.oversize += 1
            logger.error("not sending machine_details: %s", error)
            return
        self.client.publish(self.topic(MessageType.MACHINE_DETAILS), data, qos=1, retain=True)
