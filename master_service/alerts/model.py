"""What the alert engine decides: alert rows, history events and the notifications owed."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from master_service.alerts.rules import Severity


class AlertState(StrEnum):
    """A stored alert's state: `ok` rows remain only while their resolved notice is owed."""

    FIRING = "firing"
    OK = "ok"


class EventKind(StrEnum):
    """What happened, as the history, the API and the `alert` envelopes name it."""

    FIRING = "firing"
    RESOLVED = "resolved"
    FIRED = "fired"  # a one-shot rule (rebooted, data_loss)
    FLAPPING = "flapping"
    SETTLED = "settled"  # no longer flapping


class NotifyType(StrEnum):
    """Apprise's notify types (`apprise.NotifyType` values), chosen from severity and event."""

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


@dataclass(slots=True)
class Alert:
    """One row of the `alerts` table: a (node, rule) that fires, or whose resolve is owed."""

    node: str
    rule: str
    severity: Severity
    state: AlertState
    since: float
    value: float | None
    threshold: float | None
    detail: str
    notified: bool  # the channels were told it fires
    updated: float

    def to_api(self) -> dict[str, Any]:
        """The alert as `GET /api/alerts` shows it."""
        return {
            "node": self.node,
            "rule": self.rule,
            "severity": self.severity.value,
            "state": self.state.value,
            "since": self.since,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for the channels: written to the outbox with the change that caused it."""

    title: str
    body: str
    notify_type: NotifyType
    channel_tags: tuple[str, ...] = ()  # empty: every channel


@dataclass(frozen=True, slots=True)
class Event:
    """One transition or one-shot, for the history, the `alert` envelope and maybe a message."""

    at: float
    node: str
    rule: str
    severity: Severity
    kind: EventKind
    value: float | None
    threshold: float | None
    since: float | None
    message: str
    notification: Notification | None = None  # None: muted (silenced, flapping, covered)

    def to_api(self) -> dict[str, Any]:
        """The event as the history API and the `alert` envelope payload show it."""
        return {
            "at": self.at,
            "node": self.node,
            "rule": self.rule,
            "severity": self.severity.value,
            "event": self.kind.value,
            "value": self.value,
            "threshold": self.threshold,
            "since": self.since,
            "message": self.message,
            "notified": self.notification is not None,
        }


@dataclass(slots=True)
class Changes:
    """What one engine call changed: rows to store or drop, events, notifications owed."""

    upserts: dict[tuple[str, str], Alert] = field(default_factory=dict)
    deletes: set[tuple[str, str]] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)  # not tied to an event
    nodes_changed: set[str] = field(default_factory=set)  # whose firing set changed
    silences_ended: list[int] = field(default_factory=list)  # to drop from the table
    gaps_reported: dict[str, int | None] = field(default_factory=dict)  # None: forget it

    def __bool__(self) -> bool:
        return bool(
            self.upserts or self.deletes or self.events or self.notifications
            or self.silences_ended or self.gaps_reported
        )  # fmt: skip

    def put(self, alert: Alert) -> None:
        """Store (or update) this row."""
        key = (alert.node, alert.rule)
        self.deletes.discard(key)
        self.upserts[key] = alert

    def drop(self, node: str, rule: str) -> None:
        """Delete this row."""
        self.upserts.pop((node, rule), None)
        self.deletes.add((node, rule))


@dataclass(frozen=True, slots=True)
class Silence:
    """Notifications muted for a node (or glob) and one rule or all, until `ends`."""

    id: int
    node: str
    rule: str | None
    starts: float
    ends: float
    comment: str = ""

    def covers(self, node: str, rule: str, now: float) -> bool:
        """True when this silence mutes (node, rule) at `now`."""
        return (
            self.starts <= now < self.ends
            and (self.rule is None or self.rule == rule)
            and fnmatch.fnmatchcase(node, self.node)
        )

    def to_api(self) -> dict[str, Any]:
        """The silence as the API shows it."""
        return {
            "id": self.id,
            "node": self.node,
            "rule": self.rule,
            "starts": self.starts,
            "ends": self.ends,
            "comment": self.comment,
        }
