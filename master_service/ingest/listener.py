"""The master's MQTT client: a persistent session on `cluster/#` whose callback only enqueues."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cluster_protocol import (
    MASTER_NODE_ID,
    Envelope,
    MessageType,
    encode_envelope,
    master_status_topic,
    subscription,
)
from cluster_protocol.broker_url import connect_failure_reason
from cluster_protocol.config import SettingsError
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings

logger = logging.getLogger(__name__)

# PUBACKs wait until a message's effects are committed, so the broker must let that many
# messages be in flight to us at once (Mosquitto's default for clients that do not ask is 20).
RECEIVE_MAXIMUM: Final = 65535


def master_status(state: str, clock: Callable[[], float] = time.time) -> bytes:
    """The master's own status envelope (birth or will)."""
    envelope = Envelope(
        type=MessageType.STATUS, node=MASTER_NODE_ID, ts=clock(), seq=0, payload={"state": state}
    )
    return encode_envelope(envelope)


class Listener:
    """Owns the paho client; hands every message to `submit` and never blocks otherwise.

    QoS 1 messages are acknowledged only once the ingest thread has committed their effects
    (`acknowledge`): a master killed before that gets them again from its session.
    """

    def __init__(
        self,
        settings: MasterSettings,
        submit: Callable[[RawMessage], None],
        extra_topics: dict[str, Callable[[bytes], None]] | None = None,
        receive: bool = True,
        announce: bool = True,
    ) -> None:
        self.settings = settings
        # False on a follower of several masters: the master's online/offline status (and
        # its will) is the leader's to say.
        self.announce = announce
        self.submit = submit
        self._stopping = False
        # False when another connection (Mqtt5Listener) receives cluster/#: this one then
        # publishes and takes only `extra_topics`, under a client id (session) of its own.
        self.receive = receive
        self.client_id = settings.client_id if receive else f"{settings.client_id}-pub"
        self.extra_topics = dict(extra_topics or {})
        self.connected = threading.Event()
        # Monotonic time the connection was lost (or the listener started), None while connected.
        self.disconnected_since: float | None = time.monotonic()
        self.callback_errors = 0
        self.connects = 0
        # (connection number, mid, qos) of every submitted message, in submit order: the
        # ingest thread commits in that same order.
        self._unacked: deque[tuple[int, int, int]] = deque()
        self._ack_lock = threading.Lock()
        self._connection = 0
        address = settings.broker_address
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.enable_logger(logging.getLogger("paho.master"))
        if address.username is not None:
            self.client.username_pw_set(address.username, address.password)
        if address.tls:
            try:
                self.client.tls_set(ca_certs=settings.ca_file)
            except (OSError, ssl.SSLError) as error:
                raise SettingsError(
                    "ca_file", f"cannot load CA certificate {settings.ca_file!r}: {error}"
                ) from error
        if announce:
            self.client.will_set(
                master_status_topic(settings.prefix), master_status("offline"), qos=1, retain=True
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background (the broker may not be up yet) and keep reconnecting."""
        address = self.settings.broker_address
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Without clean_start=False on every connect and an expiry, Mosquitto drops the
        # session and everything queued for us while we were away (docs/protocol.md).
        properties.SessionExpiryInterval = self.settings.session_expiry
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        logger.info("connecting to %s as %s", address.redacted(), self.client_id)
        self.disconnected_since = time.monotonic()
        self.client.connect_async(
            address.host,
            address.port,
            keepalive=self.settings.keepalive,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Announce offline, disconnect cleanly and stop the network thread."""
        self._stopping = True
        if self.connected.is_set() and self.announce:
            info = self.client.publish(
                master_status_topic(self.settings.prefix), master_status("offline"), 1, True
            )
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def acknowledge(self, count: int) -> None:
        """Send the PUBACKs of the oldest `count` submitted messages: their effects are stored."""
        with self._ack_lock:
            done = [self._unacked.popleft() for _ in range(min(count, len(self._unacked)))]
            current = self._connection
        for connection, mid, qos in done:
            # A PUBACK belongs to the connection the message came on; after a reconnect the
            # broker resends unacknowledged messages and the (node, seq) check drops repeats.
            if connection == current and qos > 0:
                self.client.ack(mid, qos)

    def disconnected_for(self) -> float | None:
        """Seconds since the connection was lost (or since start when never up); None if up."""
        since = self.disconnected_since
        return None if since is None else time.monotonic() - since

    def publish(
        self, topic: str, payload: bytes | None, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish from any thread (paho queues it; QoS 1 is resent after a reconnect)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                logger.error(
                    "broker %s refused the connection: %s (check the user name and password, "
                    "and that the broker has that user)",
                    self.settings.broker_address.redacted(),
                    reason_code,
                )
                return
            self.connects += 1
            with self._ack_lock:
                self._connection += 1
            logger.info(
                "connected to %s (session %s)",
                self.settings.broker_address.redacted(),
                "resumed" if flags.session_present else "new",
            )
            # Subscribing on every connect: a broker that lost our session (restart without
            # persistence) would otherwise leave us deaf. no_local skips our own publishes.
            everything = subscription(self.settings.prefix)
            topics = [(everything, SubscribeOptions(qos=1, noLocal=True))] if self.receive else []
            # A second, overlapping subscription makes Mosquitto 2 deliver the message twice.
            topics += [
                (topic, SubscribeOptions(qos=1))
                for topic in self.extra_topics
                if not (self.receive and mqtt.topic_matches_sub(everything, topic))
            ]
            if topics:
                client.subscribe(topics)
            if self.announce:
                client.publish(
                    master_status_topic(self.settings.prefix), master_status("online"), 1, True
                )
            self.connected.set()
            self.disconnected_since = None
        except Exception:
            self.callback_errors += 1
            logger.exception("on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block, so the real error is still
        # the one being handled: name it (an untrusted certificate is not a network blip).
        try:
            address = self.settings.broker_address
            reason = connect_failure_reason(sys.exc_info()[1], address)
            logger.error("cannot connect to broker %s: %s; retrying", address.redacted(), reason)
        except Exception:
            self.callback_errors += 1
            logger.exception("on_connect_fail failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        with self._ack_lock:
            self._connection += 1
        if self._stopping:  # our own disconnect at stop: nothing to warn about
            logger.info("disconnected from the broker: %s", reason_code)
            return
        logger.warning("disconnected from the broker: %s; reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # An exception escaping here would kill paho's network thread while is_connected()
        # still says True (docs/protocol.md): catch everything, log, count.
        try:
            special = self.extra_topics.get(message.topic)
            if special is not None:
                special(bytes(message.payload))
                client.ack(message.mid, message.qos)
                return
            if not self.receive:  # left from an older subscription of this session
                client.ack(message.mid, message.qos)
                return
            with self._ack_lock:
                self._unacked.append((self._connection, message.mid, message.qos))
            self.submit(
                RawMessage(message.topic, bytes(message.payload), bool(message.retain), time.time())
            )
        except Exception:
            self.callback_errors += 1
            logger.exception("on_message failed for %s", message.topic)
