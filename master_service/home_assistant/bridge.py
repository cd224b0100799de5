"""Connect Home Assistant discovery to the ingest path: an Observer feeding DiscoveryPublisher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

    def restore(
        self, states: Sequence[NodeState], firing: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """Teach the publisher the nodes a previous run knew, and the alerts firing at start.

        `firing` is node -> rules the alert engine restored from the database; the engine
        sends `node_alerts` only when a node's set changes, so without it a restored alert
        would show OFF until then.
        """
        for state in states:
            if state.details is not None and state.metrics is not None:
                self.node_details(state.node, state.details)
                self.node_metrics(state.node, state.metrics)
        # The retained alerts topic still holds what the previous run published last, which
        # may be an ON for an alert that resolved while the master was down. Publish this run's
        # picture instead: the restored firing sets, OFF for every other node. It is merged
        # into the publisher's map, never a reset of it: a `node_alerts` that came before this
        # (it is newer than the database) is kept, so no stale OFF; one that comes after is
        # published after this, whole and in order under the publisher's lock, so no stale ON.
        self.publisher.publish_alerts(firing)

    def node_details(self, node: str, details: MachineDetails) -> None:
        """Machine details accepted: the publisher sends only what changed."""
        self.publisher.node_details(node, details)

    def node_metrics(self, node: str, payload: MetricsPayload) -> None:
        """Metrics accepted: only a new disk or throttle flag leads to a publish."""
        mounts = disk_mounts(payload)
        self.publisher.node_metrics_shape(node, mounts, payload.get("throttled") is not None)

    def node_alerts(self, node: str, firing: tuple[str, ...]) -> None:
        """The rules firing on a node changed: its problem sensor follows (ON while any)."""
        self.publisher.node_alerts(node, firing)

    def node_forgotten(self, node: str) -> None:
        """Clear the node's discovery so no orphan entities remain (its disks are known there)."""
        self.publisher.forget(node)
