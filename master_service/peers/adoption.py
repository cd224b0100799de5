"""The leader takes over the broker session of a master that stopped for good, and ends it.

Mosquitto keeps a shared-subscription member's turn while it is away: a master that died
keeps being given its share of the metrics, queued in its persistent session until it comes
back (tests/integration/test_shared_subscription.py). One that comes back within
`member_timeout` takes them itself. Past that, the leader connects under its client id,
stores what the session holds (history, and the messages for its own live state, as a
follower would), unsubscribes, and ends the session; only then are the others' shares whole.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.history_rows import insert_history
from master_service.ingest.router import RawMessage
from master_service.peers.follower import forward_batch, share_history_writes
from master_service.peers.topics import adoption_marker, left_behind
from master_service.settings import MasterSettings
from master_service.state import ClusterState
from master_service.storage.database import Database
from master_service.storage.forwarded import write_forwarded

logger = logging.getLogger(__name__)

CHECK_EVERY_S: Final = 5.0
CONNECT_WAIT_S: Final = 10.0
ADOPTION_LIMIT_S: Final = 120.0
POLL_S: Final = 0.05
REMARK_AFTER_S: Final = 5.0


class AdoptionError(RuntimeError):
    """A session could not be taken over (the broker refused, or it did not empty in time)."""


class Adoptions:
    """The leader's watch: every few seconds, adopt the sessions of members gone silent."""

    def __init__(
        self,
        settings: MasterSettings,
        silent_members: Callable[[], list[str]],
        forget_member: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.silent_members = silent_members
        self.forget_member = forget_member
        self.adopted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="picluster-adopt", daemon=True)

    def start(self) -> None:
        """Watch from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (an adoption under way finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=ADOPTION_LIMIT_S)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            try:
                members = self.silent_members()
            except Exception as error:  # the database is away: look again later
                logger.debug("cannot list the masters: %s", error)
                continue
            for member in members:
                if self._stop.is_set():
                    return
                try:
                    taken = adopt_session(self.settings, member, self._stop.is_set)
                except Exception as error:  # tried again on the next check
                    logger.warning("cannot take over the session of master %s: %s", member, error)
                    continue
                self.forget_member(member)
                self.adopted.append(member)
                logger.warning(
                    "master %s was silent for %.0f s: its broker session is ended, and the "
                    "%d messages it held are stored",
                    member,
                    self.settings.member_timeout,
                    taken,
                )


def adopt_session(
    settings: MasterSettings, client_id: str, stopping: Callable[[], bool] = lambda: False
) -> int:
    """Store what a master's session holds, then end it and its publisher's; return messages.

    Everything is acknowledged only after its commit, so a leader that dies half-way leaves
    the rest in the session for the next try.
    """
    session = _Session(settings, client_id, keep=True)
    try:
        session.wait_connected()
        taken = _empty(session, settings.database, settings.prefix, stopping)
        session.end()
    finally:
        session.close()
    # The publisher's session (`-pub`) holds only Home Assistant's topics: ended, unread.
    publisher = _Session(settings, f"{client_id}-pub", keep=False)
    try:
        publisher.wait_connected()
        publisher.end()
    finally:
        publisher.close()
    return taken


def _empty(session: _Session, database: Database, prefix: str, stopping: Callable[[], bool]) -> int:
    """Unsubscribe, then store and acknowledge everything the session holds; return how many.

    The end is known, not guessed from a pause: after the UNSUBACK nothing new joins the
    session, and a marker it publishes to itself comes back behind everything it held.
    """
    # One topic per session (dropped by `left_behind` if this is cut short), a new payload
    # per try.
    marker_topic = adoption_marker(prefix, session.client_id)
    marker = uuid.uuid4().hex.encode()
    connection = database.connect()
    ctx = Context(ClusterState(time.time), IngestCounters(), prefix)
    taken = 0
    started = time.monotonic()
    try:
        session.client.unsubscribe(left_behind(prefix, []))  # whichever of them it had
        session.wait(session.unsubscribed, "UNSUBACK")
        session.client.subscribe(marker_topic, qos=1)
        session.wait(session.subscribed, "SUBACK")
        session.client.publish(marker_topic, marker, qos=1)
        quiet_since = time.monotonic()
        while True:
            if session.taken_back:
                raise AdoptionError("the master came back and took its session")
            if stopping():
                raise AdoptionError("this master stops (the rest stays in the session)")
            if time.monotonic() - started > ADOPTION_LIMIT_S:
                raise AdoptionError(f"not emptied in {ADOPTION_LIMIT_S:.0f} s")
            batch = session.take()
            held = [m for m in batch if m.topic != marker_topic]
            if held:
                taken += _store(held, ctx, connection)
            for message in batch:  # after the commit
                session.client.ack(message.mid, message.qos)
            if any(m.topic == marker_topic and m.payload == marker for m in batch):
                return taken
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > REMARK_AFTER_S:
                # A session at the broker's queue limit drops the marker (and still acks it).
                session.client.publish(marker_topic, marker, qos=1)
                quiet_since = time.monotonic()
            else:
                time.sleep(POLL_S)
    finally:
        connection.close()


def _store(batch: list[mqtt.MQTTMessage], ctx: Context, connection: Any) -> int:
    """Commit the metrics among `batch` as a follower would; return how many were valid."""
    now = time.time()
    messages = [RawMessage(m.topic, bytes(m.payload), False, now) for m in batch]
    forward_batch(messages, ctx, lambda raw, error: logger.error("%s: %s", raw.topic, error))
    rows, forwarded = ctx.pending_history, ctx.forwarded
    ctx.pending_history, ctx.forwarded = [], []
    share_history_writes(connection)
    if rows:
        insert_history(connection, rows)
    if forwarded:
        write_forwarded(connection, forwarded)
    connection.commit()
    return len(forwarded)


class _Session:
    """A paho connection under another master's client id."""

    def __init__(self, settings: MasterSettings, client_id: str, *, keep: bool) -> None:
        self.client_id = client_id
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.unsubscribed = threading.Event()
        self.subscribed = threading.Event()
        self.refusal: str | None = None
        self.ending = False
        self.taken_back = False  # the master itself connected again: it keeps its session
        self._received: deque[mqtt.MQTTMessage] = deque()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        address = settings.broker_address
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set(ca_certs=settings.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_message = lambda _client, _userdata, message: self._received.append(message)
        client.on_unsubscribe = lambda *_: self.unsubscribed.set()
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_disconnect = self._on_disconnect
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # keep: resume the session as it is (clean start off, its expiry); otherwise start
        # clean, which discards what it held.
        properties.SessionExpiryInterval = settings.session_expiry if keep else 0
        client.connect_async(
            address.host,
            address.port,
            keepalive=settings.keepalive,
            clean_start=not keep,
            properties=properties,
        )
        client.loop_start()
        self.client = client

    def _on_connect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self.refusal = str(reason)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, *_: Any) -> None:
        if not self.ending:
            # Not ours to end: the master connected again under its id (its session is its
            # own again; what was acknowledged here is stored). No reconnect, no tug of war.
            self.taken_back = True
            client.disconnect()
        self.disconnected.set()

    def wait_connected(self) -> None:
        """Wait for the CONNACK; raise AdoptionError on a refusal or none."""
        if not self.connected.wait(CONNECT_WAIT_S):
            raise AdoptionError(f"no answer from the broker as {self.client_id}")
        if self.refusal is not None:
            raise AdoptionError(f"the broker refused {self.client_id}: {self.refusal}")

    def wait(self, event: threading.Event, what: str) -> None:
        """Wait for the broker's answer; raise AdoptionError without one."""
        if not event.wait(CONNECT_WAIT_S):
            raise AdoptionError(f"no {what} from the broker as {self.client_id}")

    def take(self) -> list[mqtt.MQTTMessage]:
        """What arrived since the last take."""
        received = self._received
        return [received.popleft() for _ in range(len(received))]

    def end(self) -> None:
        """Disconnect with a session expiry of 0: the broker drops the session."""
        self.ending = True
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        self.client.disconnect(properties=properties)
        self.disconnected.wait(CONNECT_WAIT_S)  # sent before the network thread stops

    def close(self) -> None:
        """Disconnect (the session stays, unless `end` ended it) and stop the network thread."""
        if not self.ending and self.connected.is_set() and not self.taken_back:
            self.ending = True
            self.client.disconnect()
            self.disconnected.wait(CONNECT_WAIT_S)
        self.client.loop_stop()
