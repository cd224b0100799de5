"""Alert delivery end to end: a migrated SQLite outbox, Apprise, and a real HTTP receiver.

Channels are Apprise `json://127.0.0.1:PORT/<path>` URLs pointed at a local http.server that
answers each path with 200, or with 500 while the test says that path is down. Writes go
through a simple writer (each task in its own committed transaction), standing in for the
ingest thread.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import ClassVar, TypeVar

import pytest

from master_service.alerts.delivery import Delivery, send_test
from master_service.alerts.heartbeat import Heartbeat
from master_service.alerts.model import Notification, NotifyType
from master_service.alerts.outbox import OutboxReader, enqueue
from master_service.alerts.settings import AlertSettings, Channel
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.ingestor import Ingestor
from master_service.state import ClusterState
from master_service.storage.store import Store
from tests.support.receiver import WAIT_S, Receiver
from tests.support.waiting import wait_until

T = TypeVar("T")


def fast(settings: AlertSettings, store: Store, clock: Callable[[], float] = time.time) -> Delivery:
    """A Delivery whose retries come after 50 to 200 ms instead of 5 s to 15 min."""
    return Delivery(
        settings,
        store.path,
        SimpleWriter(store),
        clock,
        backoff_s=0.05,
        backoff_max_s=0.2,
        jitter=0.0,
    )


class SimpleWriter:
    """Runs each write task at once in its own committed transaction (the ingest thread's job)."""

    # One lock per store, shared by all its writers: the connection is the ingest thread's,
    # and here the test's thread and the delivery thread both write through it.
    _locks: ClassVar[weakref.WeakKeyDictionary[Store, threading.Lock]] = weakref.WeakKeyDictionary()
    _locks_lock = threading.Lock()

    def __init__(self, store: Store) -> None:
        self.store = store
        with self._locks_lock:
            self.lock = self._locks.setdefault(store, threading.Lock())

    def __call__(self, task: Callable[[Store], T]) -> Future[T]:
        """Run and commit the task; the future is already complete."""
        future: Future[T] = Future()
        with self.lock:
            try:
                result = task(self.store)
                self.store.commit()
            except Exception as error:
                self.store.rollback()
                future.set_exception(error)
            else:
                future.set_result(result)
        return future


class FakeClock:
    """A settable time, for max_age without waiting a day."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The webhook endpoint."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def started() -> Iterator[Callable[[Delivery], Delivery]]:
    """Start a Delivery and stop it after the test."""
    running: list[Delivery] = []

    def start(delivery: Delivery) -> Delivery:
        delivery.start()
        running.append(delivery)
        return delivery

    yield start
    for delivery in running:
        delivery.stop()
        assert not delivery.is_alive()


def notify(
    store: Store,
    channels: tuple[Channel, ...],
    title: str,
    tags: tuple[str, ...] = (),
    now: float | None = None,
) -> int:
    """Enqueue one notification as the engine does (in a committed transaction)."""
    notification = Notification(title, f"{title} (body)", NotifyType.WARNING, tags)
    at = time.time() if now is None else now
    return SimpleWriter(store)(lambda s: enqueue(s.connection, notification, channels, at)).result()


def outbox(store: Store) -> list[str]:
    """Titles still owed, oldest first."""
    reader = OutboxReader(store.path)
    try:
        return [row.title for row in reader.rows()]
    finally:
        reader.close()


def attempts(store: Store) -> int:
    """Failed attempts stored for the (one) row owed."""
    reader = OutboxReader(store.path)
    try:
        return sum(row.attempts for row in reader.rows())
    finally:
        reader.close()


def test_a_notification_is_delivered_once_and_deleted(
    store: Store, receiver: Receiver, started: Callable[[Delivery], Delivery]
) -> None:
    channels = (Channel(receiver.url("hook")),)
    delivery = started(Delivery(AlertSettings(channels=channels), store.path, SimpleWriter(store)))
    notify(store, channels, "node-01 is offline", now=None)
    delivery.wake()
    receiver.wait(lambda: receiver.count("hook") >= 1, "the notification")
    wait_until(lambda: not outbox(store), message="the delivered row to be deleted")
    [request] = receiver.requests
    assert request.payload["title"] == "node-01 is offline"
    assert request.payload["message"] == "node-01 is offline (body)"
    assert request.payload["type"] == "warning"
    # A second one goes too, and the first is not sent again on the way.
    notify(store, channels, "node-02 is offline")
    delivery.wake()
    receiver.wait(lambda: receiver.count("hook") >= 2, "the second notification")
    wait_until(lambda: not outbox(store), message="the second row to be deleted")
    assert receiver.accepted("hook") == ["node-01 is offline", "node-02 is offline"]
    stats = delivery.stats()
    assert stats["channels"] == {
        "json://127.0.0.1": {"sent": 2, "failed": 0, "expired": 0, "pending": 0}
    }
    assert (stats["sent"], stats["failed"], stats["pending"]) == (2, 0, 0)


def test_retries_until_the_receiver_accepts_then_delivers_exactly_once(
    store: Store,
    receiver: Receiver,
    started: Callable[[Delivery], Delivery],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="master_service.alerts.delivery")
    url = receiver.url("flaky").replace("//", "//bot:s3cret@", 1)  # a secret in the URL
    channels = (Channel(url),)
    receiver.down("flaky", requests=3)
    delivery = started(fast(AlertSettings(channels=channels), store))
    notify(store, channels, "disk full")
    delivery.wake()
    wait_until(lambda: not outbox(store), message="delivery after the outage")
    assert receiver.count("flaky", status=500) == 3
    assert receiver.accepted("flaky") == ["disk full"]
    counters = delivery.counters()["json://127.0.0.1"]
    assert (counters.sent, counters.failed, counters.failing) == (1, 3, False)
    # The outage is logged once when it starts and once when it ends; the token never.
    mine = [r for r in caplog.records if r.name == "master_service.alerts.delivery"]
    assert [r.levelname for r in mine] == ["ERROR", "INFO"]
    assert "did not accept" in mine[0].getMessage()
    assert "500" in mine[0].getMessage()
    assert mine[1].getMessage() == "channel json://127.0.0.1 delivers again after 3 failures"
    assert "s3cret" not in caplog.text


def test_a_notification_expires_after_max_age(
    store: Store,
    receiver: Receiver,
    started: Callable[[Delivery], Delivery],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1000.0)
    channels = (Channel(receiver.url("dead")),)
    receiver.down("dead")
    settings = AlertSettings(channels=channels, max_age_s=60.0)
    delivery = started(fast(settings, store, clock))
    notify(store, channels, "memory high", now=1000.0)
    delivery.wake()
    # The clock moves only once each failure is stored, or the retry would be set after it.
    wait_until(lambda: attempts(store) == 1, message="the first failure")
    clock.now = 1030.0  # the retry is due by now
    delivery.wake()
    wait_until(lambda: attempts(store) == 2, message="a retry")
    assert outbox(store) == ["memory high"]
    clock.now = 1060.0
    delivery.wake()
    wait_until(lambda: not outbox(store), message="the expired row to be dropped")
    stats = delivery.stats()["channels"]["json://127.0.0.1"]
    assert stats["expired"] == 1
    assert stats["sent"] == 0
    assert stats["failed"] >= 2
    expired = [r for r in caplog.records if "older than max_age" in r.getMessage()]
    assert len(expired) == 1
    assert expired[0].levelname == "ERROR"
    assert "'memory high'" in expired[0].getMessage()
    tries = receiver.count("dead")
    receiver.up("dead")
    notify(store, channels, "later", now=1060.0)
    delivery.wake()
    receiver.wait(lambda: receiver.accepted("dead") == ["later"], "the next notification")
    assert receiver.count("dead") == tries + 1  # the expired one never went again


def test_one_channel_down_does_not_hold_up_the_other(
    store: Store, receiver: Receiver, started: Callable[[Delivery], Delivery]
) -> None:
    channels = (Channel(receiver.url("up")), Channel(receiver.url("down")))
    receiver.down("down")
    delivery = started(fast(AlertSettings(channels=channels), store))
    notify(store, channels, "first")
    notify(store, channels, "second")
    delivery.wake()
    receiver.wait(lambda: receiver.accepted("up") == ["first", "second"], "the working channel")
    receiver.wait(lambda: receiver.count("down", status=500) >= 2, "retries on the down one")
    assert outbox(store) == ["first", "second"]  # still owed to the down channel
    stats = delivery.stats()
    assert stats["channels"]["json://127.0.0.1 #1"]["pending"] == 2
    assert delivery.counters()["json://127.0.0.1 #1"].failing
    receiver.up("down")
    wait_until(lambda: not outbox(store), message="the down channel to catch up")
    # In order, each exactly once; the working channel got nothing twice.
    assert receiver.accepted("down") == ["first", "second"]
    assert receiver.accepted("up") == ["first", "second"]
    assert receiver.count("up") == 2


def test_tags_route_notifications_to_their_channels(
    store: Store, receiver: Receiver, started: Callable[[Delivery], Delivery]
) -> None:
    channels = (
        Channel(receiver.url("ops"), ("ops",)),
        Channel(receiver.url("pager"), ("pager",)),
        Channel(receiver.url("all")),
    )
    delivery = started(Delivery(AlertSettings(channels=channels), store.path, SimpleWriter(store)))
    assert notify(store, channels, "to everyone") == 3
    assert notify(store, channels, "to the pager", ("pager",)) == 1
    assert notify(store, channels, "to ops and pager", ("ops", "pager")) == 2
    delivery.wake()
    wait_until(lambda: not outbox(store), message="every row to be delivered")
    assert receiver.accepted("ops") == ["to everyone", "to ops and pager"]
    assert receiver.accepted("pager") == ["to everyone", "to the pager", "to ops and pager"]
    assert receiver.accepted("all") == ["to everyone"]


def test_rows_of_removed_channels_are_dropped_with_a_warning(
    store: Store,
    receiver: Receiver,
    started: Callable[[Delivery], Delivery],
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept, removed = Channel(receiver.url("kept")), Channel(receiver.url("removed"))
    notify(store, (kept, removed), "from before the restart")
    delivery = started(Delivery(AlertSettings(channels=(kept,)), store.path, SimpleWriter(store)))
    wait_until(lambda: not outbox(store), message="the outbox to be handled")
    assert receiver.accepted("kept") == ["from before the restart"]
    assert receiver.count("removed") == 0
    assert delivery.stats()["dropped"] == 1
    warnings = [r for r in caplog.records if "no longer configured" in r.getMessage()]
    assert len(warnings) == 1


def test_rows_left_by_a_stopped_master_go_out_after_a_restart(
    store: Store, receiver: Receiver, started: Callable[[Delivery], Delivery]
) -> None:
    channels = (Channel(receiver.url("later")),)
    receiver.down("later")
    settings = AlertSettings(channels=channels)
    first = fast(settings, store)
    first.start()
    notify(store, channels, "rebooted")
    first.wake()
    wait_until(lambda: attempts(store) >= 1, message="a failed attempt")
    first.stop()
    assert outbox(store) == ["rebooted"]
    receiver.up("later")
    started(fast(settings, store))  # the next run finds the row without a wake
    wait_until(lambda: not outbox(store), message="delivery by the next run")
    assert receiver.accepted("later") == ["rebooted"]


def test_delivery_through_the_ingest_thread_as_writer(
    store: Store, receiver: Receiver, started: Callable[[Delivery], Delivery]
) -> None:
    channels = (Channel(receiver.url("a")), Channel(receiver.url("b")))
    receiver.down("b", requests=2)
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), store)
    ingestor.start()
    try:
        delivery = started(
            Delivery(
                AlertSettings(channels=channels),
                store.path,
                ingestor.write,
                backoff_s=0.05,
                backoff_max_s=0.2,
                jitter=0.0,
            )
        )
        notification = Notification("throttled", "node-03 throttles", NotifyType.WARNING)
        added = ingestor.write(lambda s: enqueue(s.connection, notification, channels, time.time()))
        assert added.result(timeout=WAIT_S) == 2
        delivery.wake()
        wait_until(lambda: not outbox(store), message="delivery to both channels")
        delivery.stop()
    finally:
        ingestor.stop()
    assert receiver.accepted("a") == ["throttled"]
    assert receiver.accepted("b") == ["throttled"]
    assert receiver.count("b", status=500) == 2


def test_stop_ends_a_waiting_thread_at_once(store: Store, receiver: Receiver) -> None:
    channels = (Channel(receiver.url("hook")),)
    delivery = Delivery(AlertSettings(channels=channels), store.path, SimpleWriter(store))
    delivery.start()
    wait_until(lambda: delivery.stats()["pending"] == 0, message="the thread to run")
    # Idle, it waits up to MAX_WAIT_S (60 s) for work; stop() must cut that wait short.
    stopping = time.monotonic()
    delivery.stop()
    assert time.monotonic() - stopping < 2.0
    assert not delivery.is_alive()


def test_send_test_reports_each_channel(receiver: Receiver) -> None:
    receiver.down("bad")
    channels = (Channel(receiver.url("good")), Channel(receiver.url("bad")))
    good, bad = send_test(channels, None)
    assert (good.index, good.label, good.accepted, good.error) == (
        0,
        "json://127.0.0.1 #0",
        True,
        None,
    )
    assert (bad.index, bad.accepted) == (1, False)
    assert bad.error is not None
    assert "500" in bad.error
    assert receiver.accepted("good") == ["[picluster] test notification"]
    [only] = send_test(channels, 0)
    assert only.accepted
    assert receiver.count("good") == 2
    assert receiver.count("bad") == 1
    with pytest.raises(IndexError, match="numbered 0 to 1"):
        send_test(channels, 2)
    with pytest.raises(IndexError):
        send_test(channels, -1)
    with pytest.raises(ValueError, match="no alert channels"):
        send_test((), None)


def test_heartbeat_pings_while_healthy_and_pauses_while_not(receiver: Receiver) -> None:
    healthy = threading.Event()
    healthy.set()
    heartbeat = Heartbeat(f"http://127.0.0.1:{receiver.port}/ping/uuid", 0.05, healthy.is_set)
    heartbeat.start()
    try:
        receiver.wait(lambda: receiver.count("ping/uuid", method="GET") >= 2, "pings")
        healthy.clear()
        skipped = heartbeat.skipped
        wait_until(lambda: heartbeat.skipped >= skipped + 3, message="beats while unhealthy")
        paused = receiver.count("ping/uuid", method="GET")
        wait_until(lambda: heartbeat.skipped >= skipped + 6, message="more beats while unhealthy")
        assert receiver.count("ping/uuid", method="GET") == paused
        healthy.set()
        receiver.wait(lambda: receiver.count("ping/uuid", method="GET") > paused, "pings again")
    finally:
        heartbeat.stop()
    assert not heartbeat.is_alive()
    assert heartbeat.sent >= 3
    assert heartbeat.failed == 0


def test_heartbeat_counts_failures_and_logs_the_outage_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="master_service.alerts.heartbeat")
    receiver.down("ping/secret-uuid")
    heartbeat = Heartbeat(f"http://127.0.0.1:{receiver.port}/ping/secret-uuid", 0.05, lambda: True)
    heartbeat.start()
    try:
        wait_until(lambda: heartbeat.failed >= 3, message="failed pings")
        receiver.up("ping/secret-uuid")
        wait_until(lambda: heartbeat.sent >= 1, message="a ping after the outage")
    finally:
        heartbeat.stop()
    mine = [r for r in caplog.records if r.name == "master_service.alerts.heartbeat"]
    assert [r.levelname for r in mine] == ["ERROR", "INFO"]
    assert "HTTP 500" in mine[0].getMessage()
    assert "secret-uuid" not in caplog.text


def test_heartbeat_stop_does_not_wait_for_the_interval(receiver: Receiver) -> None:
    heartbeat = Heartbeat(f"http://127.0.0.1:{receiver.port}/ping", 3600.0, lambda: True)
    heartbeat.start()
    receiver.wait(lambda: receiver.count("ping", method="GET") == 1, "the first ping")
    stopped = threading.Event()

    def stop() -> None:
        heartbeat.stop()
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    assert stopped.wait(5.0), "stop waited for the hour-long interval"
