"""The ingest inbox: order kept, batches bounded, a full inbox holds the network thread back."""

from __future__ import annotations

import threading
import time

from master_service.ingest.inbox import Inbox
from tests.support.waiting import wait_until


def test_items_come_out_in_order_in_bounded_batches() -> None:
    inbox: Inbox[int] = Inbox(limit=100)
    for item in range(10):
        inbox.put(item)
    assert inbox.take(4, timeout_s=0) == [0, 1, 2, 3]
    assert inbox.qsize() == 6
    assert inbox.take(100, timeout_s=0) == [4, 5, 6, 7, 8, 9]
    assert inbox.empty()


def test_a_sleeping_consumer_wakes_on_put() -> None:
    inbox: Inbox[str] = Inbox(limit=10)
    taken: list[list[str]] = []
    consumer = threading.Thread(target=lambda: taken.append(inbox.take(10, timeout_s=30)))
    consumer.start()
    wait_until(lambda: inbox._consumer_waiting, timeout_s=5)
    started = time.monotonic()
    inbox.put("hello")
    consumer.join(timeout=5)
    assert taken == [["hello"]]
    assert time.monotonic() - started < 5  # woken by the put, not by the 30 s timeout


def test_an_empty_take_returns_after_its_timeout() -> None:
    inbox: Inbox[int] = Inbox(limit=10)
    started = time.monotonic()
    assert inbox.take(10, timeout_s=0.05) == []
    assert time.monotonic() - started >= 0.04


def test_a_full_inbox_blocks_the_producer_until_the_consumer_takes() -> None:
    inbox: Inbox[int] = Inbox(limit=3)
    for item in range(3):
        inbox.put(item)
    done = threading.Event()

    def produce() -> None:
        inbox.put(3)  # blocks: the inbox is full
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.2)
    assert inbox.take(2, timeout_s=0) == [0, 1]
    assert done.wait(5)
    producer.join(timeout=5)
    assert inbox.take(10, timeout_s=0) == [2, 3]
