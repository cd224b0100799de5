"""Alerts at /metrics: what fires now, and how notifications fare per channel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from master_service.alerts.delivery import ChannelCounters
from master_service.alerts.model import Alert

PREFIX = "picluster"


class AlertSource(Protocol):
    """What the collector reads: the engine's firing alerts and the delivery counters."""

    def firing_alerts(self) -> list[Alert]:
        """Alerts firing now."""
        ...

    def channel_counters(self) -> dict[str, ChannelCounters]:
        """Per channel name, delivery counters since start."""
        ...


class AlertCollector(Collector):
    """`picluster_alert_firing{rule,node,severity}` and the notification counters."""

    def __init__(self, source: AlertSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """The families, read at scrape time."""
        firing = GaugeMetricFamily(
            f"{PREFIX}_alert_firing",
            "1 for each alert firing now",
            labels=["rule", "node", "severity"],
        )
        for alert in self.source.firing_alerts():
            firing.add_metric([alert.rule, alert.node, alert.severity.value], 1.0)
        yield firing
        counters = self.source.channel_counters()
        sent = CounterMetricFamily(
            f"{PREFIX}_alert_notifications_sent", "Notifications a channel accepted",
            labels=["channel"],
        )  # fmt: skip
        failed = CounterMetricFamily(
            f"{PREFIX}_alert_notifications_failed",
            "Delivery attempts a channel refused or that raised (each is retried)",
            labels=["channel"],
        )
        expired = CounterMetricFamily(
            f"{PREFIX}_alert_notifications_expired",
            "Notifications dropped after max_age without being accepted",
            labels=["channel"],
        )
        failing = GaugeMetricFamily(
            f"{PREFIX}_alert_channel_failing",
            "1 while a channel's last delivery attempt failed",
            labels=["channel"],
        )
        for name, counter in sorted(counters.items()):
            sent.add_metric([name], float(counter.sent))
            failed.add_metric([name], float(counter.failed))
            expired.add_metric([name], float(counter.expired))
            failing.add_metric([name], float(counter.failing))
        yield from (sent, failed, expired, failing)
