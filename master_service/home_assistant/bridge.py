"""Connect Home Assistant discovery to the ingest path: an Observer feeding DiscoveryPublisher."""

from __future__ import annotations

from collections.abc import Sequence

from cluster_protocol.payloads import MachineDetails, MetricsPayload
from master_service.home_assistant.publisher import DiscoveryPublisher
from master_service.ingest.observers import Observer
from master_service.state import NodeState


def disk_mounts(metrics: MetricsPayload | None) -> list[str]:
    """Mount points named in a metrics payload."""
    disks = (metrics or {}).get("disks")
    if not isinstance(disks, list):
        return []
    return [d["mount"] for d in disks if isinstance(d, dict) and isinstance(d.get("mount"), str)]


class HomeAssistantObserver(Observer):
    """Announce a node when first seen or changed; clear it when forgotten; never per sample."""

    def __init__(self, publisher: DiscoveryPublisher) -> None:
        self.publisher = publisher
        self._mounts: dict[str, list[str]] = {}

    def restore(self, states: Sequence[NodeState]) -> None:
        """Teach the publisher the nodes a previous run knew; reset the problem sensors."""
        for state in states:
            if state.details is not None and state.metrics is not None:
                self.node_details(state.node, state.details)
                self.node_metrics(state.node, state.metrics)
        # The retained alerts topic may still hold the previous run's ON for an alert that
        # resolved while the master was down. Publish what this run knows instead: OFF for
        # every node unless `node_alerts` already reported rules firing on it. That is the
        # publisher's current map, never a reset of it, so a `node_alerts` that came first
        # cannot be undone (no stale OFF); one that comes later is published after this one,
        # whole and in order under the publisher's lock (no stale ON).
        self.publisher.publish_alerts()

    def node_details(self, node: str, details: MachineDetails) -> None:
        """Machine details accepted: the publisher sends only what changed."""
        self.publisher.node_details(node, details)

    def node_metrics(self, node: str, payload: MetricsPayload) -> None:
        """Metrics accepted: only a new disk or throttle flag leads to a publish."""
        mounts = disk_mounts(payload)
        self._mounts[node] = mounts
        self.publisher.node_metrics_shape(node, mounts, payload.get("throttled") is not None)

    def node_alerts(self, node: str, firing: tuple[str, ...]) -> None:
        """The rules firing on a node changed: its problem sensor follows (ON while any)."""
        self.publisher.node_alerts(node, firing)

    def node_forgotten(self, node: str) -> None:
        """Clear the node's discovery so no orphan entities remain."""
        self.publisher.forget(node, self._mounts.pop(node, []))
