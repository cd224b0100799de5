"""`cluster-node say`: publish one free-text `message` envelope and wait for its PUBACK."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from paho.mqtt.reasoncodes import ReasonCode

from cluster_protocol import Envelope, EnvelopeError, MessageType, encode_envelope, topic_for
from node_publisher.app import client_id_for, make_client
from node_publisher.lean_imports import mqtt
from node_publisher.settings import PublisherSettings
from node_publisher.spool import Spool

logger = logging.getLogger(__name__)

DEFAULT_SAY_TIMEOUT_S: Final = 10.0


class DeliveryError(RuntimeError):
    """The message could not be delivered; the text says why, for the user."""


class _Acks:
    """Connection and PUBACK results reported by paho's thread."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connect_result: ReasonCode | None = None
        self.published = threading.Event()
        self.publish_result: ReasonCode | None = None
        self.mid: int | None = None
        self.lock = threading.Lock()
        self.early: dict[int, ReasonCode] = {}

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connect_result = rc
        self.connected.set()

    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        with self.lock:
            if self.mid is None:  # PUBACK before publish() returned its mid
                self.early[mid] = rc
                return
            if mid == self.mid:
                self.publish_result = rc
                self.published.set()

    def expect(self, mid: int) -> None:
        with self.lock:
            self.mid = mid
            if mid in self.early:
                self.publish_result = self.early[mid]
                self.published.set()


def say(settings: PublisherSettings, text: str, timeout_s: float = DEFAULT_SAY_TIMEOUT_S) -> int:
    """Publish `text` as a `message` envelope (QoS 1) and wait for the PUBACK; return its seq."""
    node = settings.node_id
    topic = topic_for(node, MessageType.MESSAGE, settings.prefix)
    ts = time.time()

    def build(seq: int) -> bytes:
        return encode_envelope(Envelope(MessageType.MESSAGE, node, ts, seq, text))

    try:
        spool = Spool(settings.spool_path, settings.spool_max)
    except Exception as error:
        raise DeliveryError(
            f"cannot open the node's state in {settings.state_dir}: {error}"
        ) from error
    try:
        try:
            build(spool.current_seq() + 1)  # refuse an oversize message before connecting
        except EnvelopeError as error:
            raise DeliveryError(f"not sent: {error}") from error
        acks = _Acks()
        # Not the agent's client id: the broker would disconnect a running agent.
        client = make_client(settings, client_id_for(node) + "-say")
        client.on_connect = acks.on_connect
        client.on_publish = acks.on_publish
        address = settings.address
        try:
            client.connect(address.host, address.port, keepalive=settings.keepalive)
        except (OSError, ValueError) as error:
            raise DeliveryError(f"cannot connect to {address.redacted()}: {error}") from error
        client.loop_start()
        try:
            return _publish(client, acks, spool, topic, build, timeout_s, address.redacted())
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        spool.close()


def _publish(
    client: mqtt.Client,
    acks: _Acks,
    spool: Spool,
    topic: str,
    build: Callable[[int], bytes],
    timeout_s: float,
    where: str,
) -> int:
    if not acks.connected.wait(timeout_s):
        raise DeliveryError(f"no answer from {where} within {timeout_s:g} s")
    if acks.connect_result is None or acks.connect_result.is_failure:
        raise DeliveryError(f"broker {where} refused the connection: {acks.connect_result}")
    seq, data = spool.take_seq(build)
    info = client.publish(topic, data, qos=1)
    acks.expect(info.mid)
    if not acks.published.wait(timeout_s):
        raise DeliveryError(f"no PUBACK from {where} within {timeout_s:g} s")
    if acks.publish_result is not None and acks.publish_result.is_failure:
        raise DeliveryError(f"broker {where} refused the message: {acks.publish_result}")
    logger.info("message delivered to %s (seq %d)", topic, seq)
    return seq
