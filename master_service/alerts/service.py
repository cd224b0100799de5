"""Alerting as one part of the master: engine, observer, timer, delivery, heartbeat, silences."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from master_service.alerts import records
from master_service.alerts.delivery import ChannelCounters, Delivery, TestResult, send_test
from master_service.alerts.engine import GAP_SETTLE_MIN_S, AlertEngine
from master_service.alerts.heartbeat import Heartbeat
from master_service.alerts.model import Alert, Silence
from master_service.alerts.observer import AlertObserver, Publish
from master_service.alerts.rules import BUILTIN_RULES, CLUSTER_RULE
from master_service.alerts.settings import AlertSettings
from master_service.alerts.timer import AlertTimer
from master_service.ingest.ingestor import Ingestor
from master_service.ingest.observers import Observer, ObserverErrors
from master_service.state import ClusterState
from master_service.storage.store import Store

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
T = TypeVar("T")


class SilenceError(ValueError):
    """A silence request that cannot be honoured (unknown rule, bad duration)."""


class StoreBusyError(RuntimeError):
    """The database did not take the write in time (a full disk, a failing store)."""


@dataclass(frozen=True, slots=True)
class Restored:
    """Alert state read from the database at start (by `build`, which does the I/O)."""

    alerts: Sequence[Alert] = ()
    silences: Sequence[Silence] = ()
    gaps_reported: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Store, now: float) -> Restored:
        """Read the alert rows and the silences still running."""
        connection = store.connection
        return cls(
            records.load_alerts(connection),
            records.load_silences(connection, now),
            records.load_gaps_reported(connection),
        )


@dataclass(slots=True)
class Alerting:
    """Wires the alert parts to the ingest path; `start()` and `stop()` their threads."""

    settings: AlertSettings
    engine: AlertEngine
    observer: AlertObserver
    ingestor: Ingestor
    reader: records.AlertReader
    clock: Callable[[], float] = time.time
    delivery: Delivery | None = None
    heartbeat: Heartbeat | None = None
    timer: AlertTimer | None = field(default=None)
    # Builds the engine again from stored alert state (a follower's copy of the leader's).
    remake: Callable[[Restored], AlertEngine] | None = None

    @classmethod
    def create(
        cls,
        settings: AlertSettings,
        *,
        store: Store,
        state: ClusterState,
        ingestor: Ingestor,
        restored: Restored,
        publish: Publish,
        prefix: str,
        observers: Sequence[Observer],
        observer_errors: ObserverErrors,
        link_base: str,
        healthy: Callable[[], bool],
        connected: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        gap_settle_s: float = GAP_SETTLE_MIN_S,
    ) -> Alerting:
        """Build every part (no I/O: the database was read into `restored`)."""

        def remake(restored: Restored) -> AlertEngine:
            return AlertEngine(
                settings.active_rules,
                state,
                clock,
                link_base=settings.dashboard_url or link_base,
                alerts=restored.alerts,
                silences=restored.silences,
                gaps_reported=restored.gaps_reported,
                blind=lambda: not connected(),
                monotonic=time.monotonic,
                gap_settle_s=gap_settle_s,
            )

        engine = remake(restored)
        delivery = (
            Delivery(settings, store.database, ingestor.write, clock) if settings.channels else None
        )
        observer = AlertObserver(
            engine,
            ingestor.write,
            settings.channels,
            publish=publish,
            prefix=prefix,
            observers=observers,
            observer_errors=observer_errors,
            delivered=delivery.wake if delivery is not None else lambda: None,
            clock=clock,
        )
        heartbeat = None
        if settings.heartbeat_url:
            heartbeat = Heartbeat(settings.heartbeat_url, settings.heartbeat_interval_s, healthy)
        timer = AlertTimer(
            engine.next_due,
            lambda task: ingestor.call_in_writer(lambda _store: task()),
            observer.tick,
            clock,
        )
        engine.on_schedule = timer.poke
        return cls(
            settings=settings,
            engine=engine,
            observer=observer,
            ingestor=ingestor,
            reader=records.AlertReader(store),
            clock=clock,
            delivery=delivery,
            heartbeat=heartbeat,
            timer=timer,
            remake=remake,
        )

    def reload(self, store: Store) -> None:
        """A follower: show the alerts and silences the leader stored (never started here)."""
        if self.remake is not None:
            self.engine = self.remake(Restored.load(store, self.clock()))

    def start(self) -> None:
        """Start the timer, the delivery worker and the heartbeat."""
        for part in (self.timer, self.delivery, self.heartbeat):
            if part is not None:
                part.start()

    def stop(self) -> None:
        """Stop the threads (what is still in the outbox waits for the next run)."""
        for part in (self.heartbeat, self.delivery, self.timer):
            if part is not None and part.is_alive():
                part.stop()
        self.reader.close()

    # -- what the API offers ----------------------------------------------------------------

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now, with whether each is silenced or flapping."""
        now = self.clock()
        shown = []
        for alert in self.engine.firing():
            silenced, flapping = self.engine.is_muted(alert.node, alert.rule, now)
            shown.append({**alert.to_api(), "silenced": silenced, "flapping": flapping})
        return shown

    def firing_alerts(self) -> list[Alert]:
        """Alerts firing now (for Prometheus)."""
        return self.engine.firing()

    def channel_counters(self) -> dict[str, ChannelCounters]:
        """Per channel name, delivery counters (for Prometheus)."""
        return self.delivery.counters() if self.delivery is not None else {}

    def delivery_stats(self) -> dict[str, Any]:
        """The delivery worker's counters (empty when no channel is configured)."""
        return self.delivery.stats() if self.delivery is not None else {}

    def history(self, limit: int, node: str | None = None) -> list[dict[str, Any]]:
        """The latest alert events, newest first."""
        return self.reader.history(limit, node)

    def silences(self) -> list[Silence]:
        """Silences still running or to come."""
        return self.engine.silences(self.clock())

    def rule_names(self) -> list[str]:
        """Every rule a silence may name: built-in, custom and the cluster alert."""
        return sorted(set(BUILTIN_RULES) | {r.name for r in self.settings.rules} | {CLUSTER_RULE})

    def silence(self, node: str, rule: str | None, for_s: float, comment: str = "") -> Silence:
        """Mute notifications for a node (or glob) and one rule or all, for `for_s` seconds."""
        known = self.rule_names()
        if rule is not None and rule not in known:
            raise SilenceError(f"unknown rule {rule!r} (known: {', '.join(sorted(known))})")
        if for_s <= 0:
            raise SilenceError("a silence must last more than 0 seconds")
        now = self.clock()
        future = self.ingestor.write(
            lambda store: records.insert_silence(store, node, rule, now, now + for_s, comment)
        )
        silence = _committed(future)
        self.engine.add_silence(silence)
        logger.info("silenced %s (%s) for %.0f s", node, rule or "every rule", for_s)
        return silence

    def unsilence(self, silence_id: int) -> bool:
        """End a silence now; what it held back is sent. False when there was none."""
        existed = _committed(
            self.ingestor.write(lambda store: records.delete_silence(store, silence_id))
        )
        # On the ingest thread, like every other engine change, so the writes it causes
        # queue in the order the engine made them.
        now = self.clock()

        def end_in_writer(_store: Store) -> None:
            self.observer.apply(self.engine.remove_silence(silence_id, now))

        self.ingestor.call_in_writer(end_in_writer)
        return existed

    def test(self, index: int | None) -> list[TestResult]:
        """Send a test notification through each channel (or one); whether each accepted it."""
        return send_test(self.settings.channels, index)


def _committed(future: Future[T]) -> T:
    """The write's result once committed; StoreBusyError if that takes too long."""
    try:
        return future.result(timeout=WRITE_TIMEOUT_S)
    except FutureTimeout as error:
        raise StoreBusyError(
            f"the database took no write for {WRITE_TIMEOUT_S:g} s (see /healthz)"
        ) from error
