"""The outbox sender: one thread that drains the spool to the broker, a few at a time."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Final, Protocol

from node_publisher.lean_imports import mqtt
from node_publisher.spool import Spool

logger = logging.getLogger(__name__)

# Small on purpose: the retained status birth must never wait behind a day of spooled metrics,
# and paho gets slower with a large in-flight window (docs/protocol.md). Below paho's default of 20.
DEFAULT_MAX_INFLIGHT: Final = 16


class Publisher(Protocol):
    """The one paho method the outbox needs."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue one message and return its tracking info (with `mid`)."""
        ...


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "connected", "disconnected", "acked", "stop"
    mid: int = 0
    failed: bool = False
    reason: str = ""


class Outbox:
    """Sends spooled envelopes in seq order while connected; deletes each on its PUBACK.

    paho callbacks only enqueue events here: `on_publish` runs while paho holds its own
    message lock, so touching SQLite or publishing from it could deadlock. `wake` (called by
    whoever spooled, never by paho) sends at once from the caller's thread instead: one thread
    hand-off less per sample.
    """

    def __init__(
        self, spool: Spool, client: Publisher, max_inflight: int = DEFAULT_MAX_INFLIGHT
    ) -> None:
        self._spool = spool
        self._client = client
        self._max_inflight = max_inflight
        # SimpleQueue: put and get in C, no Condition (and no new lock) per event.
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._cursor = 0  # highest seq handed to paho since the last connect
        self._connected = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._state_lock = threading.Lock()  # connected, in flight, cursor: sender or waker
        self.delivered = 0
        self.rejected = 0

    def start(self) -> None:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sender thread (the spool keeps whatever was not acknowledged)."""
        self._events.put(_Event("stop"))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def notify_connected(self) -> None:
        """The client (re)connected: send what the spool holds."""
        self._events.put(_Event("connected"))

    def notify_disconnected(self) -> None:
        """The client lost the broker: hold new sends until it is back."""
        self._events.put(_Event("disconnected"))

    def notify_acked(self, mid: int, failed: bool = False, reason: str = "") -> None:
        """The broker answered a publish (PUBACK); safe to call from paho's thread."""
        self._events.put(_Event("acked", mid=mid, failed=failed, reason=reason))

    def wake(self) -> None:
        """New envelopes were spooled: send what fits now; never call it from a paho callback."""
        self._idle.clear()
        try:
            with self._state_lock:
                self._pump()
        except Exception:
            # The envelope is spooled: the sender thread tries again on its next event.
            logger.exception("outbox failed sending on wake")

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is spooled or in flight; False on timeout."""
        return self._idle.wait(timeout_s)

    def _run(self) -> None:
        while True:
            event = self._events.get()
            try:
                if event.kind == "stop":
                    return
                with self._state_lock:
                    self._apply(event)
                    while True:  # apply everything already queued before pumping once
                        try:
                            event = self._events.get_nowait()
                        except queue.Empty:
                            break
                        if event.kind == "stop":
                            return
                        self._apply(event)
                    self._pump()
            except Exception:
                # A bug here must not end delivery: log it and keep serving events.
                logger.exception("outbox failed handling %s", event.kind)

    def _apply(self, event: _Event) -> None:
        if event.kind == "connected":
            self._connected = True
            # paho resends its own in-flight messages after a reconnect (same mid);
            # start over from the oldest spooled seq and skip those.
            self._cursor = 0
        elif event.kind == "disconnected":
            self._connected = False
        elif event.kind == "acked":
            seq = self._inflight.pop(event.mid, None)
            if seq is None:
                return  # a status or machine_details publish, not ours
            if event.failed:
                # Resending cannot help (e.g. 135 Not authorized): drop it, loudly.
                self.rejected += 1
                logger.warning("broker refused seq %d: %s; dropping it", seq, event.reason)
            else:
                self.delivered += 1
            self._spool.remove(seq)

    def _pump(self) -> None:
        if self._connected:
            room = self._max_inflight - len(self._inflight)
            in_flight = set(self._inflight.values())
            if room > 0:
                for entry in self._spool.pending(self._cursor, room + len(in_flight)):
                    if room <= 0:
                        break
                    self._cursor = entry.seq
                    if entry.seq in in_flight:
                        continue
                    info = self._client.publish(entry.topic, entry.data, qos=1)
                    if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                        logger.warning(
                            "paho refused seq %d (rc %s); retrying later", entry.seq, info.rc
                        )
                        self._cursor = entry.seq - 1
                        break
                    self._inflight[info.mid] = entry.seq
                    room -= 1
        if not self._inflight and len(self._spool) == 0:
            self._idle.set()
        else:
            self._idle.clear()
