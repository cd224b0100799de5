"""The engine on the ingest path: each change stored with its cause, then announced.

`AlertObserver` hears every accepted status, details and metrics sample (the ingest
thread's notices), asks the engine, and hands the resulting changes to the writer, so the
alert rows, history and outbox commit in the same transaction as the messages that caused
them (and are acknowledged with them). Once committed, each event goes out as an `alert`
envelope, the delivery worker is woken and other observers (Home Assistant) hear which rules
fire on the node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from cluster_protocol import MASTER_NODE_ID, Envelope, encode_envelope
from cluster_protocol.payloads import MachineDetails, MetricsPayload
from cluster_protocol.topics import master_topic
from master_service.alerts import records
from master_service.alerts.engine import AlertEngine
from master_service.alerts.model import Changes
from master_service.alerts.settings import Channel
from master_service.ingest.observers import Notice, Observer, ObserverErrors, notify
from master_service.storage.command_log import Writer

logger = logging.getLogger(__name__)

ALERT_TYPE = "alert"
"""The envelope type of alert events, on `<prefix>/_master/alert` (QoS 1, not retained)."""

Publish = Callable[..., object]


class AlertObserver(Observer):
    """Feeds the engine from the ingest path and stores what it decides."""

    def __init__(
        self,
        engine: AlertEngine,
        write: Writer,
        channels: Sequence[Channel],
        *,
        publish: Publish,
        prefix: str,
        observers: Sequence[Observer],
        observer_errors: ObserverErrors,
        delivered: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self._write = write
        self._channels = tuple(channels)
        self._publish = publish
        self._topic = master_topic(ALERT_TYPE, prefix)
        self._observers = observers
        self._observer_errors = observer_errors
        self._delivered = delivered  # wakes the delivery worker
        self._clock = clock
        self.store_failures = 0

    def node_metrics(self, node: str, payload: MetricsPayload) -> None:
        """Thresholds, reboots, liveness and gaps, on every sample."""
        self.apply(self.engine.metrics(node, payload, self._clock()))

    def node_details(self, node: str, details: MachineDetails) -> None:
        """Liveness, gaps and a new boot."""
        self.apply(self.engine.details(node, details, self._clock()))

    def node_status(self, node: str, state: str) -> None:
        """Online or offline: liveness."""
        self.apply(self.engine.node_event(node, self._clock()))

    def node_forgotten(self, node: str) -> None:
        """A forgotten node's alerts go, without notifications."""
        self.apply(self.engine.forget(node))

    def tick(self) -> None:
        """Run the engine's due timers (on the ingest thread)."""
        self.apply(self.engine.due(self._clock()))

    def apply(self, changes: Changes) -> Future[int] | None:
        """Queue the changes for the next commit; announce them once committed."""
        if not changes:
            return None
        now = self._clock()
        channels = self._channels
        future = self._write(lambda store: records.save(store, changes, channels, now))
        future.add_done_callback(lambda done: self._committed(done, changes))
        return future

    def _committed(self, done: Future[int], changes: Changes) -> None:
        error = done.exception()
        if error is not None:  # the task's own fault: the store's are retried by the ingest
            self.store_failures += 1
            logger.error("storing alert changes failed: %s", error)
            return
        if done.result():
            self._delivered()
        for event in changes.events:
            envelope = Envelope(
                type=ALERT_TYPE,
                node=MASTER_NODE_ID,
                ts=event.at,
                seq=0,  # the master's envelopes carry seq 0 (docs/protocol.md)
                payload=event.to_api(),
            )
            try:
                self._publish(self._topic, encode_envelope(envelope), qos=1, retain=False)
            except Exception:
                logger.exception("publishing an alert envelope failed")
        notices = [
            Notice("node_alerts", node, (self.engine.firing_rules(node),))
            for node in sorted(changes.nodes_changed)
        ]
        notify([o for o in self._observers if o is not self], notices, self._observer_errors)
