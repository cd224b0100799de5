"""The ingest connection on the `mqtt5` codec: bulk reads, batches to ingest, PUBACKs after commit.

paho spends about as much per message as the whole of a counting client (its MQTTMessage,
properties parsing, a callback, a PUBACK write each). Here one network thread reads as many
packets as one `recv_into` brings, decodes them with the `mqtt5` codec (Rust), hands them to
the ingest thread as one list, and writes the PUBACKs that a commit releases in one `sendall`.
Everything else of `Listener` is kept: a persistent MQTT 5 session (clean start off, session
expiry), Receive Maximum, acknowledgement only after commit, keepalive with PINGREQ,
reconnect with jittered backoff, TLS and credentials with a clear line for each refusal.
This connection only receives; the master publishes through `Listener` (paho).
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import mqtt5

from cluster_protocol import subscription
from cluster_protocol.broker_url import connect_failure_reason
from master_service.ingest.mqtt5_connect import (
    MAX_PACKET_BYTES,
    RECEIVE_MAXIMUM,
    Connection,
    RefusedError,
    connect_packet,
    open_connection,
    reason_text,
    tls_context,
)
from master_service.ingest.mqtt5_packets import (
    FATAL,
    ProtocolViolationError,
    Reason,
    decode_packets,
)
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings

logger = logging.getLogger(__name__)

BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
READ_BUFFER_BYTES: Final = 256 * 1024
POLL_MAX_S: Final = 1.0
_PUBACK: Final = struct.Struct(">BBH")  # PUBACK, remaining length 2, packet id (success)
_PINGREQ: Final = mqtt5.PingReqPacket().write()
_SUBSCRIBE_ID: Final = 1
_UNSUBSCRIBE_ID: Final = 2
# Mosquitto 2.0 (Debian 12's 2.0.11) sends more than our Receive Maximum when PUBACKs come in
# batches: measured 65,614 in flight for 65,534, 1,348 for 1,000, and up to 602 for 200 (its
# outgoing quota accounting; eclipse-mosquitto/mosquitto#2301 describes the same on bridges).
# Closing the connection with reason 147, as MQTT 5 has it, made the broker resend everything
# in flight: under load, a reconnect every few seconds and each message stored twice over. So
# an overrun is taken and logged once per connection; only one past this many times our
# maximum, or past the 65,535 packet ids (a broker that ignores it), is refused.
OVERRUN_FACTOR: Final = 4
PACKET_IDS: Final = 65_535


class ConnectionEndedError(Exception):
    """The connection ended for a reason already logged or to be logged as a warning."""


def backoff_s(failures: int) -> float:
    """Delay before reconnect attempt `failures` (1, 2, ...): doubling, capped, jittered."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** max(0, failures - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter, not a secret


class Mqtt5Listener:
    """Receives `cluster/#` on its own connection and hands messages to `submit_many`."""

    def __init__(
        self,
        settings: MasterSettings,
        submit_many: Callable[[list[RawMessage]], None],
        clock: Callable[[], float] = time.time,
        receive_maximum: int = RECEIVE_MAXIMUM,
        topics: Sequence[str] | None = None,
        unsubscribe: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        # cluster/# unless told otherwise (several masters: master_service.peers.topics).
        self.topics = list(topics) if topics is not None else [subscription(settings.prefix)]
        self.submit_many = submit_many
        self.clock = clock
        self.address = settings.broker_address
        self.keepalive_s = float(settings.keepalive)
        self.connected = threading.Event()
        # Monotonic time the connection was lost (or the listener started), None while connected.
        self.disconnected_since: float | None = time.monotonic()
        self.connects = 0
        self.callback_errors = 0  # failures of our own code, survived
        self.violations = 0  # connections we closed because of what the broker sent
        self.last_violation: mqtt5.DisconnectReasonCode | None = None
        self._context = tls_context(settings.ca_file) if self.address.tls else None
        self.receive_maximum = receive_maximum
        self._connect = connect_packet(
            settings.client_id,
            self.address,
            settings.keepalive,
            settings.session_expiry,
            receive_maximum,
        )
        self.overruns = 0  # connections on which the broker sent past our Receive Maximum
        self.peak_in_flight = 0  # the most QoS 1 messages in flight at once, any connection
        self._overrun_seen = False
        # retain_as_published off (mqtt5's default is on, paho's off): a message published
        # retained but delivered live must arrive with retain=0, or the master would take a
        # node's birth for the broker's replay of an old one (docs/protocol.md, seq).
        # No Local on a shared subscription is a protocol error (MQTT 5, 3.8.3.1).
        filters = [
            mqtt5.TopicFilter(
                topic,
                max_qos=mqtt5.QoS.AT_LEAST_ONCE,
                no_local=not topic.startswith("$share/"),
                retain_as_published=False,
            )
            for topic in self.topics
        ]
        self._subscribe = mqtt5.SubscribePacket(_SUBSCRIBE_ID, filters).write()
        # Filters a persistent session may still hold from another role (several masters: a
        # leader become follower keeps the other types), dropped on every connect.
        if unsubscribe:
            self._subscribe += mqtt5.UnsubscribePacket(_UNSUBSCRIBE_ID, list(unsubscribe)).write()
        # (connection number, packet id; 0 for QoS 0) of every submitted message, in submit
        # order: the ingest thread commits in that same order.
        self._unacked: deque[tuple[int, int]] = deque()
        self._inflight = 0  # QoS 1 messages of the current connection not acknowledged yet
        self._outgoing: list[bytes] = []  # PUBACKs released by commits, sent by our thread
        self._ack_lock = threading.Lock()
        self._connection = 0
        self._stopping = threading.Event()
        self._watched: tuple[str, threading.Event] | None = None
        # Wakes the network thread for PUBACKs and stop; made in `start`, closed in `stop`.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="picluster-mqtt5", daemon=True)

    def start(self) -> None:
        """Connect in the background (the broker may not be up yet) and keep reconnecting."""
        logger.info(
            "ingest connection (mqtt5) to %s as %s",
            self.address.redacted(),
            self.settings.client_id,
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread.start()

    def stop(self) -> None:
        """Send the PUBACKs released so far, disconnect cleanly and end the thread."""
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    def acknowledge(self, count: int) -> None:
        """Release the PUBACKs of the oldest `count` messages submitted: they are stored."""
        pack = _PUBACK.pack
        released = 0
        with self._ack_lock:
            unacked, outgoing, current = self._unacked, self._outgoing, self._connection
            for _ in range(min(count, len(unacked))):
                connection, packet_id = unacked.popleft()
                # A PUBACK belongs to the connection the message came on; after a reconnect
                # the broker resends what was not acknowledged and the seq check drops repeats.
                if packet_id and connection == current:
                    outgoing.append(pack(0x40, 2, packet_id))
                    released += 1
            self._inflight -= released
        if released:
            self._wake()

    def watch(self, topic: str) -> threading.Event:
        """An event set when a message on `topic` arrives from now on (one watch at a time)."""
        seen = threading.Event()
        self._watched = (topic, seen)
        return seen

    @property
    def in_flight(self) -> int:
        """QoS 1 messages received on this connection and not acknowledged yet."""
        return self._inflight

    def disconnected_for(self) -> float | None:
        """Seconds since the connection was lost (or since start when never up); None if up."""
        since = self.disconnected_since
        return None if since is None else time.monotonic() - since

    def _wake(self) -> None:
        # Failing means already awake (the pipe is full) or closed at stop.
        with contextlib.suppress(OSError):
            if self._wake_w is not None:
                self._wake_w.send(b"\0")

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            connection = self._open()
            if connection is not None:
                failures = 0
                self._serve(connection)
            if self._stopping.is_set():
                return
            failures += 1
            delay = backoff_s(failures)
            logger.debug("reconnecting in %.1f s", delay)
            self._stopping.wait(delay)

    def _open(self) -> Connection | None:
        """One connect attempt; every refusal is one clear line, never a traceback."""
        address = self.address
        try:
            return open_connection(address, self._context, self._connect)
        except RefusedError as refusal:
            logger.error(
                "broker %s refused the connection: %s (check the user name and password, "
                "and that the broker has that user)",
                address.redacted(),
                refusal,
            )
        except OSError as error:  # ssl.SSLError is one
            reason = connect_failure_reason(error, address)
            logger.error("cannot connect to broker %s: %s; retrying", address.redacted(), reason)
        except FATAL:
            raise
        except BaseException:
            self.callback_errors += 1
            logger.exception("connecting to %s failed", address.redacted())
        return None

    def _serve(self, connection: Connection) -> None:
        """Run one connection until it ends; it always ends closed and counted as down."""
        sock = connection.sock
        with self._ack_lock:
            self._connection += 1
            number = self._connection
            self._outgoing.clear()  # PUBACKs of an older connection mean nothing on this one
            self._inflight = 0
            self._overrun_seen = False
        logger.info(
            "ingest connection up to %s (session %s)",
            self.address.redacted(),
            "resumed" if connection.session_present else "new",
        )
        try:
            self._loop(sock, number, connection)
        except ProtocolViolationError as violation:
            self.violations += 1
            self.last_violation = violation.reason
            logger.warning(
                "closing the ingest connection: %s (%s, reason code %d); reconnecting",
                violation,
                reason_text(violation.reason),
                violation.reason,
            )
            self._send_quietly(sock, mqtt5.DisconnectPacket(reason_code=violation.reason).write())
        except ConnectionEndedError as ended:
            logger.warning("ingest connection ended: %s; reconnecting", ended)
        except OSError as error:
            reason = str(error) or type(error).__name__
            logger.warning("ingest connection lost: %s; reconnecting", reason)
        except FATAL:
            raise
        except BaseException:  # a bug of ours, or a panic in the codec: never the end of it
            self.callback_errors += 1
            logger.exception("ingest connection failed; reconnecting")
        finally:
            self.connected.clear()
            if self.disconnected_since is None:
                self.disconnected_since = time.monotonic()
            with self._ack_lock:
                self._connection += 1  # what is still unacknowledged belongs to no connection
            with contextlib.suppress(OSError):
                sock.close()

    @staticmethod
    def _send_quietly(sock: socket.socket, data: bytes) -> None:
        try:
            sock.settimeout(1.0)
            sock.sendall(data)
        except OSError:
            pass  # the connection is going anyway

    def _loop(self, sock: socket.socket, number: int, connection: Connection) -> None:
        keepalive = self.keepalive_s
        if connection.server_keepalive:  # the broker may ask for a different one (MQTT 5)
            keepalive = float(connection.server_keepalive)
        sock.settimeout(max(keepalive, 1.0))
        sock.sendall(self._subscribe)
        tls = isinstance(sock, ssl.SSLSocket)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, "broker")
        if self._wake_r is not None:  # always, once started
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        buffer = bytearray(max(READ_BUFFER_BYTES, 2 * len(connection.leftover)))
        view = memoryview(buffer)
        end = len(connection.leftover)
        view[:end] = connection.leftover
        now = time.monotonic()
        last_sent = last_received = now
        ping_sent_at: float | None = None
        try:
            if end:
                end = self._consume(view, end, number)
            while True:
                if ping_sent_at is not None:
                    due = ping_sent_at + keepalive
                else:
                    due = min(last_sent, last_received) + keepalive
                readable = tls and sock.pending() > 0  # type: ignore[attr-defined]
                if not readable:
                    wait_s = min(POLL_MAX_S, max(0.0, due - time.monotonic()))
                    for key, _ in selector.select(wait_s):
                        if key.data == "wake":
                            self._drain_wake()
                        else:
                            readable = True
                if self._send_released(sock):
                    last_sent = time.monotonic()
                if self._stopping.is_set():
                    sock.sendall(mqtt5.DisconnectPacket().write())
                    logger.info("ingest connection closed")
                    return
                if readable:
                    if end == len(buffer):
                        buffer, view = self._grown(buffer, end)
                    received = sock.recv_into(view[end:])
                    if not received:
                        raise ConnectionEndedError("the broker closed the connection")
                    end = self._consume(view, end + received, number)
                    last_received = time.monotonic()
                    ping_sent_at = None  # anything from the broker says it is alive
                now = time.monotonic()
                if ping_sent_at is not None and now - ping_sent_at >= keepalive:
                    raise ConnectionEndedError(
                        f"no answer from the broker within the keepalive ({keepalive:g} s)"
                    )
                if ping_sent_at is None and now >= min(last_sent, last_received) + keepalive:
                    sock.sendall(_PINGREQ)
                    ping_sent_at = last_sent = now
        finally:
            selector.close()
            view.release()

    @staticmethod
    def _grown(buffer: bytearray, end: int) -> tuple[bytearray, memoryview]:
        """A bigger buffer for a packet that does not fit; refused beyond MAX_PACKET_BYTES."""
        if len(buffer) >= MAX_PACKET_BYTES + 16:
            raise ProtocolViolationError(
                Reason.PACKET_TOO_LARGE, f"a packet over the {MAX_PACKET_BYTES}-byte maximum"
            )
        bigger = bytearray(min(2 * len(buffer), MAX_PACKET_BYTES + 16))
        bigger[:end] = buffer[:end]
        return bigger, memoryview(bigger)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r is not None and self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _send_released(self, sock: socket.socket) -> bool:
        """Write every PUBACK released since the last call in one `sendall`; True if any."""
        with self._ack_lock:
            if not self._outgoing:
                return False
            data = b"".join(self._outgoing)
            self._outgoing.clear()
        sock.sendall(data)
        return True

    def _consume(self, view: memoryview, end: int, number: int) -> int:
        """Decode every whole packet in view[:end], hand the messages over; return what is left."""
        messages, ids, others, position = decode_packets(view, end, self.clock())
        for packet in others:
            self._control(packet)
        if messages:
            watched = self._watched
            if watched is not None and any(m.topic == watched[0] for m in messages):
                watched[1].set()
            self._hand_over(messages, ids, number)
        left = end - position
        if position and left:
            view[:left] = bytes(view[position:end])
        return left

    def _hand_over(self, messages: list[RawMessage], ids: list[int], number: int) -> None:
        qos1 = len(ids) - ids.count(0)
        with self._ack_lock:
            self._inflight += qos1
            inflight = self._inflight
            self.peak_in_flight = max(self.peak_in_flight, inflight)
            if inflight > self.receive_maximum:
                self._overrun(inflight)
            self._unacked.extend([(number, packet_id) for packet_id in ids])
        self.submit_many(messages)

    def _overrun(self, inflight: int) -> None:
        """The broker sent past our Receive Maximum: take it (see OVERRUN_FACTOR), within reason."""
        if inflight > min(OVERRUN_FACTOR * self.receive_maximum, PACKET_IDS):
            raise ProtocolViolationError(
                Reason.RECEIVE_MAX_EXCEEDED,
                f"{inflight} messages in flight, over {OVERRUN_FACTOR} x our Receive Maximum "
                f"of {self.receive_maximum} or the {PACKET_IDS} packet ids",
            )
        if not self._overrun_seen:
            self._overrun_seen = True
            self.overruns += 1
            logger.warning(
                "the broker sent %d messages in flight, over our Receive Maximum of %d "
                "(a known Mosquitto 2.0 fault); taking them",
                inflight,
                self.receive_maximum,
            )

    def _control(self, packet: mqtt5.Packet) -> None:
        """Every packet but PUBLISH: SUBACK, PINGRESP, the broker's DISCONNECT; others refused."""
        if isinstance(packet, mqtt5.PingRespPacket):
            return
        if isinstance(packet, mqtt5.SubAckPacket) and packet.packet_id == _SUBSCRIBE_ID:
            refused = [code for code in packet.reason_codes if int(code) >= 0x80]
            if refused:
                raise ConnectionEndedError(
                    f"the broker refused the subscription to {', '.join(self.topics)}"
                    f": {refused[0].name} (check the master user's ACL)"
                )
            self.connects += 1
            self.connected.set()
            self.disconnected_since = None
            logger.info("subscribed to %s", ", ".join(self.topics))
            return
        if isinstance(packet, mqtt5.UnsubAckPacket) and packet.packet_id == _UNSUBSCRIBE_ID:
            return  # "no subscription existed" is as good as removed
        if isinstance(packet, mqtt5.DisconnectPacket):
            raise ConnectionEndedError(
                f"the broker disconnected us: {reason_text(packet.reason_code)}"
                + (f" ({packet.reason_str})" if packet.reason_str else "")
            )
        raise ProtocolViolationError(
            Reason.PROTOCOL_ERROR, f"unexpected {type(packet).__name__} from the broker"
        )
