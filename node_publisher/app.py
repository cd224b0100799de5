"""The node agent: the MQTT client with its will and birth, and paho's callbacks."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cluster_protocol import (
    MessageType,
    TopicError,
    command_subscription,
    parse_topic,
)
from cluster_protocol.broker_url import connect_failure_reason
from cluster_protocol.payloads import MachineDetails, ReplyPayload
from node_publisher.collectors import PsutilLike
from node_publisher.emitter import Emitter
from node_publisher.lean_imports import mqtt
from node_publisher.machine_info import MachinePaths
from node_publisher.outbox import Outbox
from node_publisher.sampler import DETAILS_CHECK_EVERY_S, Sampler
from node_publisher.settings import PublisherSettings
from node_publisher.spool import Spool

logger = logging.getLogger(__name__)

RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 30
OFFLINE_ACK_TIMEOUT_S: Final = 2.0
MIN_POLL_S: Final = 0.25  # a 1 s keepalive (tests) still gets its pings on time
MAX_POLL_S: Final = 5.0


class CommandHandler(Protocol):
    """Receives `cluster/<id>/cmd/<name>` messages on paho's thread: must return quickly."""

    def __call__(self, name: str, payload: bytes, retained: bool) -> None:
        """Handle (or queue) one command message."""
        ...


def commands_disabled(name: str, payload: bytes, retained: bool) -> None:
    """The default command handler: commands are not enabled on this node yet."""
    logger.warning("command %r received but commands not enabled on this node", name)


def client_id_for(node_id: str) -> str:
    """The MQTT client id of a node's agent."""
    return f"picluster-node-{node_id}"


class PacedClient(mqtt.Client):
    """paho's client whose network thread, when idle, wakes every `poll_s`, not every second.

    Publishing, subscribing and disconnecting wake it at once (paho's socket pair), so the
    idle wake-up only serves the keepalive: a quarter of it is soon enough, and on a node
    that samples every second it was one thread wake-up in five.
    """

    def __init__(self, *args: Any, poll_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_s = poll_s

    def _thread_main(self) -> None:  # paho's loop_start target, with our select timeout
        try:
            self.loop_forever(timeout=self.poll_s, retry_first_connection=True)
        finally:
            self._thread = None


def network_poll_s(keepalive_s: float) -> float:
    """How long paho's idle network thread sleeps: a quarter of the keepalive, at most 5 s."""
    return min(MAX_POLL_S, max(MIN_POLL_S, keepalive_s / 4))


def make_client(settings: PublisherSettings, client_id: str) -> mqtt.Client:
    """A paho MQTT v5 client with the node's credentials and TLS settings."""
    client = PacedClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        poll_s=network_poll_s(settings.keepalive),
    )
    client.enable_logger(logging.getLogger("paho"))
    address = settings.address
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        # CERT_REQUIRED and hostname checks are paho's defaults: the broker must prove itself.
        client.tls_set(ca_certs=settings.ca_file)
    return client


class NodeAgent:
    """One node on the broker: connects with a will, announces itself, relays samples.

    Samples come from its Sampler and leave through its Emitter; commands go to the handler.

    Several agents can run in one process (benchmarks, tests), each with its own node id
    and state directory.
    """

    def __init__(
        self,
        settings: PublisherSettings,
        ps: PsutilLike = psutil,
        command_handler: CommandHandler = commands_disabled,
        machine_paths: MachinePaths | None = None,
        clock: Callable[[], float] = time.time,
        extra_details: Mapping[str, Any] | None = None,
        details_check_every_s: float = DETAILS_CHECK_EVERY_S,
    ) -> None:
        self.settings = settings
        self._command_handler = command_handler
        self._node = settings.node_id
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._ready = threading.Event()  # connected and subscribed to its commands
        self._sample_lock = threading.Lock()
        self.sampler = Sampler(settings, ps, machine_paths, extra_details, details_check_every_s)
        self.spool = Spool(settings.spool_path, settings.spool_max)
        self.client = make_client(settings, client_id_for(self._node))
        self.outbox = Outbox(self.spool, self.client)
        self.emitter = Emitter(
            self._node, settings.prefix, self.spool, self.client, self.outbox, clock
        )
        self.callback_errors = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (the broker may not be up yet) and start sampling."""
        self.sampler.prime()
        client = self.client
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.emitter.set_will()
        address = self.settings.address
        logger.info("node %s connecting to %s", self._node, address.redacted())
        client.connect_async(address.host, address.port, keepalive=self.settings.keepalive)
        self.outbox.start()
        client.loop_start()
        self.sampler.start(self.sample_once)

    def stop(self, timeout_s: float = OFFLINE_ACK_TIMEOUT_S) -> bool:
        """Publish a retained "offline", wait briefly for its PUBACK, disconnect; True if acked."""
        self._stopping.set()
        self.sampler.stop()
        acked = False
        if self._connected.is_set():
            info = self.emitter.publish_status("offline")
            acked = _wait_published(info, timeout_s)
        if acked:
            self.client.disconnect()
        else:
            # Ask the broker to send the will instead, so the node still ends up offline.
            self.client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            )
        self.client.loop_stop()
        self.outbox.stop()
        self.spool.close()
        logger.info("node %s stopped (offline %s)", self._node, "sent" if acked else "via will")
        return acked

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the connection."""
        return self._connected.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected, announced and subscribed to commands; False on timeout."""
        return self._ready.wait(timeout_s)

    # -- what the node sends -----------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between samples now (the configured value, or one set by command)."""
        return self.sampler.interval

    def set_interval(self, interval_s: float) -> None:
        """Sample every `interval_s` from now on; details are re-published with the new value."""
        self.sampler.set_interval(interval_s)
        if self._connected.is_set():
            self.emitter.publish_details(self.sampler.details)

    def refresh(self) -> int | None:
        """Publish the machine details and one metrics sample now; the metrics' seq."""
        seq = self.sample_once()
        self.emitter.publish_details(self.sampler.details)
        return seq

    @property
    def details(self) -> MachineDetails | None:
        """The machine details as last built (a copy)."""
        return self.sampler.details

    @property
    def oversize(self) -> int:
        """Envelopes refused for being over the size limit."""
        return self.emitter.oversize

    def sample_once(self) -> int | None:
        """Collect and spool one metrics envelope (re-publishing details on change); its seq."""
        with self._sample_lock:  # the loop and a refresh command: seqs in sampling order
            metrics, details_changed = self.sampler.measure()
            metrics["spool_dropped"] = self.spool.take_dropped()
            seq = self.emitter.spool_envelope(MessageType.METRICS, metrics)
        if details_changed and self._connected.is_set():
            logger.info("machine details changed; re-publishing")
            self.emitter.publish_details(self.sampler.details)
        return seq

    def publish_message(self, text: str) -> int:
        """Spool a free-text `message` envelope; its seq. Raises EnvelopeError when oversize."""
        seq = self.emitter.spool_envelope(MessageType.MESSAGE, text, raise_errors=True)
        assert seq is not None  # raise_errors=True never returns None
        return seq

    def publish_reply(self, payload: ReplyPayload) -> int:
        """Spool a command `reply` envelope; its seq. Raises EnvelopeError when oversize."""
        seq = self.emitter.spool_envelope(MessageType.REPLY, payload, raise_errors=True)
        assert seq is not None
        return seq

    # -- paho callbacks: each catches, logs and counts (an escaping one kills paho's thread) --

    def _callback_failed(self, name: str) -> None:
        self.callback_errors += 1
        logger.exception("%s callback failed", name)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self.emitter.set_will()  # a fresh ts for the will of this connection
        except Exception:
            self._callback_failed("on_pre_connect")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        try:
            if reason_code.is_failure:
                logger.error(
                    "broker refused node %s: %s (check the node's user name and password)",
                    self._node,
                    reason_code,
                )
                return
            logger.info("node %s connected", self._node)
            self._connected.set()
            self.emitter.publish_status("online")
            self.emitter.publish_details(self.sampler.details)
            # retainAsPublished keeps the retain flag on live delivery too (MQTT 5), so a
            # command published retained is recognised and refused at once, not only on replay.
            client.subscribe(
                command_subscription(self._node, self.settings.prefix),
                options=SubscribeOptions(qos=1, retainAsPublished=True),
            )
            self.outbox.notify_connected()
        except Exception:
            self._callback_failed("on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            # Called inside paho's `except OSError:`: the error being handled is the cause.
            error = sys.exc_info()[1]
            level = logging.ERROR if _is_tls_error(error) else logging.WARNING
            logger.log(
                level,
                "cannot reach broker %s: %s; retrying",
                self.settings.address.redacted(),
                connect_failure_reason(error, self.settings.address),
            )
        except Exception:
            self._callback_failed("on_connect_fail")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        try:
            self._connected.clear()
            self._ready.clear()
            self.outbox.notify_disconnected()
            if not self._stopping.is_set():
                logger.warning("node %s disconnected: %s", self._node, reason_code)
        except Exception:
            self._callback_failed("on_disconnect")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        try:
            failed = reason_code.is_failure
            self.outbox.notify_acked(mid, failed, str(reason_code) if failed else "")
        except Exception:
            self._callback_failed("on_publish")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        try:
            if any(code.is_failure for code in reason_codes):
                logger.error("broker refused the command subscription: %s", reason_codes)
                return
            self._ready.set()
        except Exception:
            self._callback_failed("on_subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            parsed = parse_topic(message.topic, self.settings.prefix)
            if parsed.command is None or parsed.node != self._node:
                logger.warning("ignoring message on %s", message.topic)
                return
            self._command_handler(parsed.command, bytes(message.payload), bool(message.retain))
        except TopicError as error:
            logger.warning("ignoring message: %s", error)
        except Exception:
            self._callback_failed("on_message")


def _is_tls_error(error: BaseException | None) -> bool:
    # Only a TLS connection raises SSLError, and it has loaded ssl: a node on plain MQTT need
    # not load it (about 5 MiB) to learn that a refused connection is not a TLS failure.
    if "ssl" not in sys.modules:
        return False
    import ssl

    return isinstance(error, ssl.SSLError)


def _wait_published(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):
        return False  # not connected any more, or queue full
    return info.is_published()
