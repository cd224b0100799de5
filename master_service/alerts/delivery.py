"""Delivery of the outbox's notifications through Apprise, with retries and expiry.

One thread sends every channel's oldest due row (see outbox.py: each channel is a queue).
Accepted: the row is deleted, and the delete is committed before that channel's next row is
taken, so no notification is sent twice by one process. Refused or raised: the row is tried
again after an exponential backoff until `max_age` after it was created, then dropped.
A channel's outage is logged once when it starts and once when it ends, never per retry;
logs name channels by `Channel.label`, which holds no token.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import apprise

from master_service.alerts.model import NotifyType
from master_service.alerts.outbox import (
    OutboxReader,
    OutboxRow,
    delete_row,
    drop_expired,
    drop_unknown_channels,
    record_failure,
)
from master_service.alerts.settings import AlertSettings, Channel
from master_service.storage.command_log import Writer
from master_service.storage.database import Database

logger = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_S: Final = 5.0  # wait after a row's first failed attempt; doubles with each one
BACKOFF_MAX_S: Final = 15 * 60.0
JITTER: Final = 0.1  # up to 10 % more, so channels that failed together retry apart
BATCH: Final = 50  # due rows read at once
MAX_WAIT_S: Final = 60.0  # longest sleep: a row committed without `wake` still goes soon
WRITE_POLL_S: Final = 0.5  # while waiting for a write, how often to look for `stop`
REASON_MAX: Final = 300  # characters of a failure's reason in logs and in the row
TEST_TITLE: Final = "[picluster] test notification"


class _StoppingError(Exception):
    """`stop` was called while waiting for a write."""


@dataclass(frozen=True, slots=True)
class ChannelCounters:
    """One channel's delivery counters since start (for Prometheus: counters and a gauge)."""

    sent: int = 0  # notifications accepted
    failed: int = 0  # attempts refused or raised
    expired: int = 0  # notifications dropped after max_age
    failing: bool = False  # the last attempt failed (an outage is going on)


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of a test notification through one channel."""

    __test__ = False  # not a pytest test class, despite the name

    index: int
    label: str
    accepted: bool
    error: str | None = None


class _Outlet:
    """A configured channel with its Apprise instance and counters."""

    def __init__(self, channel: Channel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.notifier = _notifier(channel)
        self.sent = 0
        self.failed = 0
        self.expired = 0
        self.outage = 0  # failed attempts since the last accepted one


def _notifier(channel: Channel) -> apprise.Apprise | None:
    notifier = apprise.Apprise()
    return notifier if notifier.add(channel.url) else None


def _names(channels: Sequence[Channel]) -> list[str]:
    """Channel labels, numbered where two channels share one (e.g. two of one service)."""
    labels = [c.label for c in channels]
    return [
        label if labels.count(label) == 1 else f"{label} #{i}" for i, label in enumerate(labels)
    ]


def _send(notifier: apprise.Apprise | None, title: str, body: str, kind: NotifyType) -> str | None:
    """Send one message; None when accepted, else why not (no URL: Apprise logs hosts only)."""
    if notifier is None:
        return "Apprise does not accept the channel's URL"
    try:
        # An AppriseResult since Apprise 2 (true when accepted, with the attempt's warnings);
        # a plain bool before.
        result: Any = notifier.notify(
            body=body, title=title, notify_type=apprise.NotifyType(kind.value)
        )
        try:
            if result:
                return None
            logs = getattr(result, "logs", None)
            messages = [str(entry.message) for entry in logs()] if callable(logs) else []
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
    except Exception as error:  # a plugin's bug must not end delivery for every channel
        return f"{type(error).__name__}: {error}"[:REASON_MAX]
    reason = messages[-1] if messages else "the service did not accept it"
    return reason[:REASON_MAX]


class Delivery(threading.Thread):
    """Sends the outbox's rows through their channels until accepted or expired."""

    def __init__(
        self,
        settings: AlertSettings,
        database: str | Database,
        write: Writer,
        clock: Callable[[], float] = time.time,
        *,
        backoff_s: float = BACKOFF_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        jitter: float = JITTER,
    ) -> None:
        super().__init__(name="picluster-alert-delivery", daemon=True)
        if backoff_s <= 0 or backoff_max_s < backoff_s or jitter < 0:
            raise ValueError("need 0 < backoff_s <= backoff_max_s and jitter >= 0")
        self.max_age_s = settings.max_age_s
        self.reader = OutboxReader(database)
        self._write = write
        self._clock = clock
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._jitter = jitter
        self._outlets: dict[str, _Outlet] = {}
        for channel, name in zip(settings.channels, _names(settings.channels), strict=True):
            self._outlets.setdefault(channel.key, _Outlet(channel, name))
        for outlet in self._outlets.values():
            if outlet.notifier is None:
                logger.error("Apprise does not accept channel %s; it gets nothing", outlet.name)
        self._lock = threading.Lock()  # the counters, read by other threads
        self._condition = threading.Condition()
        self._woken = False
        self._stopping = threading.Event()
        # Rows accepted whose delete is not confirmed yet: never sent again by this process.
        self._delivered: set[int] = set()
        self._failing = False  # a turn failed (logged once until one succeeds)
        self.dropped = 0  # rows of channels no longer configured
        self.errors = 0  # turns that failed (the database, a write task)

    def wake(self) -> None:
        """Look at the outbox now (call after new rows were committed)."""
        with self._condition:
            self._woken = True
            self._condition.notify()

    def stop(self) -> None:
        """End the thread (an attempt under way finishes first) and close the reader."""
        self._stopping.set()
        self.wake()
        if self.is_alive():
            self.join(timeout=30)
        self.reader.close()

    def counters(self) -> dict[str, ChannelCounters]:
        """Each channel's counters by its name (label), without reading the database."""
        with self._lock:
            return {
                o.name: ChannelCounters(o.sent, o.failed, o.expired, o.outage > 0)
                for o in self._outlets.values()
            }

    def stats(self) -> dict[str, Any]:
        """Per channel name: sent, failed, expired and pending; and the totals of each."""
        pending = self.reader.pending_by_channel()
        counters = self.counters()
        channels = {
            o.name: {
                "sent": counters[o.name].sent,
                "failed": counters[o.name].failed,
                "expired": counters[o.name].expired,
                "pending": pending.get(key, 0),
            }
            for key, o in self._outlets.items()
        }
        totals = {
            field: sum(c[field] for c in channels.values())
            for field in ("sent", "failed", "expired")
        }
        with self._lock:
            dropped = self.dropped
        return {
            "channels": channels,
            **totals,
            "pending": sum(pending.values()),
            "dropped": dropped,
        }

    def run(self) -> None:
        """Deliver until stopped: a turn, then wait for `wake` or the next due row."""
        try:
            self._guarded(self._sweep)
            while True:
                with self._condition:
                    self._woken = False
                if self._stopping.is_set():
                    return
                wait_s = self._guarded(self._turn)
                with self._condition:
                    if not self._woken and not self._stopping.is_set():
                        self._condition.wait(self._backoff_s if wait_s is None else wait_s)
        except _StoppingError:
            return
        finally:
            self.reader.close()

    def _guarded(self, step: Callable[[], T]) -> T | None:
        """Run a step; a failure is logged (once until a step succeeds) and None returned."""
        try:
            result = step()
        except _StoppingError:
            raise
        except Exception:
            self.errors += 1
            if not self._failing:
                logger.exception("alert delivery failed; trying again")
            self._failing = True
            return None
        if self._failing:
            logger.info("alert delivery works again")
        self._failing = False
        return result

    def _sweep(self) -> None:
        """At start: drop rows of channels no longer configured, and expired rows."""
        dropped = self._await(self._write(drop_unknown_channels(self._outlets)))
        for key, count in dropped.items():
            logger.warning(
                "dropped %d notification(s) for channel %s, which is no longer configured",
                count,
                key,
            )
        with self._lock:
            self.dropped += sum(dropped.values())
        expired = self._await(self._write(drop_expired(self._clock() - self.max_age_s)))
        for row in expired:
            if (outlet := self._outlets.get(row.channel)) is not None:
                self._log_expired(outlet, row)

    def _turn(self) -> float:
        """Handle every due row; return how long to wait for the next one."""
        while not self._stopping.is_set():
            rows = self.reader.due(self._clock(), BATCH)
            if not rows:
                break
            for row in rows:
                if self._stopping.is_set():
                    break
                self._handle(row)
        due = self.reader.next_attempt()
        if due is None:
            return MAX_WAIT_S
        return min(max(0.0, due - self._clock()), MAX_WAIT_S)

    def _handle(self, row: OutboxRow) -> None:
        outlet = self._outlets.get(row.channel)
        if outlet is None:  # its channel was removed while we ran: cannot happen, but be safe
            logger.warning("dropped notification %r: its channel is not configured", row.title)
            self._await(self._write(delete_row(row.id)))
            with self._lock:
                self.dropped += 1
            return
        if row.id in self._delivered:  # accepted before; only its delete is left to do
            self._remove_delivered(row.id)
            return
        if self._clock() >= row.created + self.max_age_s:
            self._await(self._write(delete_row(row.id)))
            self._log_expired(outlet, row)
            return
        reason = _send(outlet.notifier, row.title, row.body, row.notify_type)
        if reason is None:
            self._delivered.add(row.id)
            with self._lock:
                outlet.sent += 1
                failures, outlet.outage = outlet.outage, 0
            if failures:
                logger.info("channel %s delivers again after %d failures", outlet.name, failures)
            self._remove_delivered(row.id)
            return
        with self._lock:
            outlet.failed += 1
            outlet.outage += 1
            first = outlet.outage == 1
        if first:
            logger.error(
                "channel %s did not accept a notification: %s; retrying (each notification"
                " for up to %.0f s)",
                outlet.name,
                reason,
                self.max_age_s,
            )
        retry_at = min(
            self._clock() + self._backoff(row.attempts + 1), row.created + self.max_age_s
        )
        self._await(self._write(record_failure(row.id, retry_at, reason)))

    def _remove_delivered(self, row_id: int) -> None:
        self._await(self._write(delete_row(row_id)))
        self._delivered.discard(row_id)

    def _log_expired(self, outlet: _Outlet, row: OutboxRow) -> None:
        with self._lock:
            outlet.expired += 1
        logger.error(
            "channel %s: dropped notification %r after %d failed attempt(s), older than"
            " max_age (%.0f s); last error: %s",
            outlet.name,
            row.title,
            row.attempts,
            self.max_age_s,
            row.last_error,
        )

    def _backoff(self, attempts: int) -> float:
        """The wait after a row's n-th failed attempt: doubling, capped, with some jitter."""
        base = min(self._backoff_s * 2.0 ** min(attempts - 1, 60), self._backoff_max_s)
        return base * (1 + random.uniform(0, self._jitter))  # not cryptography

    def _await(self, future: Future[T]) -> T:
        """The write's result once committed; `_StoppingError` if stopped meanwhile."""
        while True:
            try:
                return future.result(timeout=WRITE_POLL_S)
            except TimeoutError:
                if self._stopping.is_set():
                    raise _StoppingError from None


def send_test(channels: Sequence[Channel], index: int | None = None) -> list[TestResult]:
    """Send a test notification through every channel, or the one at `index` (from 0)."""
    if not channels:
        raise ValueError("no alert channels are configured ([alerts] channels)")
    if index is not None and not 0 <= index < len(channels):
        raise IndexError(
            f"there is no channel {index}: the channels are numbered 0 to {len(channels) - 1}"
        )
    names = _names(channels)
    chosen = range(len(channels)) if index is None else (index,)
    results = []
    for i in chosen:
        body = f"A test notification from picluster through channel {i} ({names[i]})."
        reason = _send(_notifier(channels[i]), TEST_TITLE, body, NotifyType.INFO)
        results.append(TestResult(i, names[i], reason is None, reason))
    return results
