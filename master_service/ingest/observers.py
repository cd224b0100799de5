"""Hooks other parts of the master (Home Assistant, commands) attach to the ingest path."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cluster_protocol.payloads import MachineDetails, MetricsPayload, ReplyPayload

logger = logging.getLogger(__name__)

LOG_EVERY_S: Final = 10.0  # per observer: a traceback, then a count of what followed


class Observer:
    """Called on the ingest thread after state changed, without the cluster lock; be quick."""

    def node_details(self, node: str, details: MachineDetails) -> None:
        """A node's machine details were accepted."""

    def node_metrics(self, node: str, payload: MetricsPayload) -> None:
        """A node's metrics were accepted."""

    def node_status(self, node: str, state: str) -> None:
        """A node announced online or offline (or its will did)."""

    def node_reply(self, node: str, reply: ReplyPayload) -> None:
        """A node answered a command."""

    def node_forgotten(self, node: str) -> None:
        """A node was removed with `cluster-master forget`."""

    def node_alerts(self, node: str, firing: tuple[str, ...]) -> None:
        """The rules firing on a node changed (empty: none); sent after the change is stored."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One call owed to every observer: `observer.<event>(node, *args)`."""

    event: str
    node: str
    args: tuple[Any, ...] = ()  # the event's payload: its type is the Observer method's


class ObserverErrors:
    """Failures counted per observer; logged with a traceback at most every LOG_EVERY_S each."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def failed(self, observer: Observer, notice: Notice) -> None:
        """Count and maybe log the exception being handled (call from an `except` block)."""
        name = type(observer).__name__
        with self._lock:
            self.counts[name] += 1
            now = self._clock()
            last = self._last_logged.get(name)
            if last is not None and now - last < LOG_EVERY_S:
                self._unlogged[name] += 1
                return
            self._last_logged[name] = now
            unlogged = self._unlogged.pop(name, 0)
        more = f" ({unlogged} more failures since the last report)" if unlogged else ""
        logger.exception("observer %s failed on %s of %s%s", name, notice.event, notice.node, more)

    def snapshot(self) -> dict[str, int]:
        """Failures so far, by observer class name."""
        with self._lock:
            return dict(self.counts)


def notify(
    observers: Sequence[Observer], notices: Iterable[Notice], errors: ObserverErrors
) -> None:
    """Deliver each notice to each observer; one observer's failure never skips another."""
    for notice in notices:
        for observer in observers:
            try:
                getattr(observer, notice.event)(notice.node, *notice.args)
            except Exception:
                errors.failed(observer, notice)


def notify_metrics(
    observers: Sequence[Observer],
    samples: Sequence[tuple[str, MetricsPayload]],
    errors: ObserverErrors,
) -> None:
    """`node_metrics` for each (node, payload) to each observer that takes it, in order.

    The hot path's `notify`: no `Notice` per sample (built only for a failure's report),
    and an observer that keeps the base class's no-op is not called at all.
    """
    for observer in observers:
        if getattr(type(observer), "node_metrics", None) is Observer.node_metrics:
            continue  # an Observer subclass that keeps the base no-op
        for node, payload in samples:
            try:
                observer.node_metrics(node, payload)
            except Exception:  # a failure, as `notify` counts it (a missing method too)
                errors.failed(observer, Notice("node_metrics", node, (payload,)))
