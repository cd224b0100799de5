"""Decides when Home Assistant discovery is (re)published: first sight, change, HA birth, forget.

Never on an ordinary sample: `node_metrics_shape` only publishes when a node shows a mount or
throttling flags not seen before. The shape only grows while the master runs, so an unplugged
USB disk does not delete its entity (and its history settings) every time it blinks.

It also owns the retained `<prefix>/_master/alerts` that the `problem` binary sensors read:
the rules firing per node, always published whole (see `node_alerts`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import orjson

from cluster_protocol import DEFAULT_PREFIX, MASTER_NODE_ID, Envelope, encode_envelope
from cluster_protocol.payloads import MachineDetails
from master_service.home_assistant import discovery as hd

logger = logging.getLogger(__name__)

DISCOVERY_QOS: Final = 1

Publish = Callable[[str, bytes | None, int, bool], None]
"""`publish(topic, payload, qos, retain)`; thread-safe, non-blocking; None or b"" clears."""


@dataclass
class _Node:
    """What the publisher knows about one node, and what it last published for it."""

    details_json: bytes | None = None  # as bytes: a dict cost ~2 KB per node, this ~0.8 KB
    mounts: frozenset[str] = frozenset()
    has_throttled: bool = False
    shape_known: bool = False
    last_mounts: tuple[str, ...] | None = None  # fast path: the last list seen, as given
    # topic -> digest of the payload last published there; the payloads themselves took
    # ~7 KB per node (bench/README.md, scale run).
    published: dict[str, bytes] = field(default_factory=dict)

    @property
    def details(self) -> MachineDetails | None:
        """The node's latest machine details (a fresh dict)."""
        if self.details_json is None:
            return None
        # Only ever the bytes of a MachineDetails accepted by node_details.
        return cast(MachineDetails, orjson.loads(self.details_json))


def _digest(payload: bytes | None) -> bytes:
    return hashlib.blake2b(payload or b"", digest_size=16).digest()


class DiscoveryPublisher:
    """Keeps Home Assistant's retained discovery in step with the nodes the master knows."""

    def __init__(
        self,
        publish: Publish,
        prefix: str = hd.DEFAULT_HA_PREFIX,
        cluster_prefix: str = DEFAULT_PREFIX,
        per_entity: bool = False,
        origin_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._publish = publish
        self._prefix = hd.validate_prefix(prefix)
        self._cluster_prefix = hd.validate_prefix(cluster_prefix, "cluster prefix")
        self._per_entity = per_entity
        self._sw_version = hd.origin_version()
        self._origin = hd.origin_info(self._sw_version, origin_url)
        self._nodes: dict[str, _Node] = {}
        self._clock = clock
        self._firing: dict[str, tuple[str, ...]] = {}  # node -> rules firing; none: absent
        self._reported: set[str] = set()  # nodes node_alerts spoke of: newer than any restore
        # Every publish happens under this lock, so a forget can never interleave with an
        # announce of the same node and leave a config behind.
        self._lock = threading.Lock()

    @property
    def ha_status_topic(self) -> str:
        """The topic to subscribe to for Home Assistant's birth: `<prefix>/status`."""
        return hd.ha_status_topic(self._prefix)

    def node_details(self, node_id: str, details: MachineDetails) -> None:
        """A machine_details envelope was accepted: publish if the node's config changed."""
        with self._lock:
            node = self._nodes.setdefault(node_id, _Node())
            node.details_json = orjson.dumps(dict(details))
            self._sync(node_id, node, force=False)

    def node_metrics_shape(self, node_id: str, mounts: Sequence[str], has_throttled: bool) -> None:
        """Called per metrics message: publishes only when a new mount or throttling appears."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node()
            elif (
                node.shape_known
                and (node.has_throttled or not has_throttled)
                and node.last_mounts == tuple(mounts)
            ):
                return
            node.last_mounts = tuple(mounts)
            grown = not node.mounts.issuperset(mounts) or (has_throttled and not node.has_throttled)
            if node.shape_known and not grown:
                return
            node.mounts = node.mounts.union(mounts)
            node.has_throttled = node.has_throttled or has_throttled
            node.shape_known = True
            self._sync(node_id, node, force=False)

    def node_alerts(self, node_id: str, firing: Sequence[str]) -> None:
        """The rules firing on a node changed: publish the alerts topic if that changes it."""
        rules = tuple(sorted(set(firing)))
        with self._lock:
            self._reported.add(node_id)
            if self._firing.get(node_id, ()) == rules:
                return
            if rules:
                self._firing[node_id] = rules
            else:
                self._firing.pop(node_id, None)
            self._send_alerts()

    def publish_alerts(self, restored: Mapping[str, Sequence[str]] | None = None) -> None:
        """Publish the firing alerts as known now (nothing known: every problem sensor OFF).

        `restored` (node -> rules the alert engine read from the database) fills in the nodes
        `node_alerts` has not spoken of yet; what it said is newer and stays.
        """
        with self._lock:
            for node_id, rules in (restored or {}).items():
                if node_id not in self._reported:
                    if rules:
                        self._firing[node_id] = tuple(sorted(set(rules)))
                    else:
                        self._firing.pop(node_id, None)
            self._send_alerts()

    def announce_cluster(self) -> None:
        """Publish the cluster device's config (nodes online, cores, RAM, average CPU)."""
        with self._lock:
            self._announce_cluster()

    def announce_all(self) -> None:
        """Re-publish everything known, changed or not (Home Assistant restarted)."""
        with self._lock:
            self._announce_cluster()
            for node_id, node in self._nodes.items():
                self._sync(node_id, node, force=True)
            self._send_alerts()  # retained already; again in case the broker lost it

    def on_ha_status(self, payload: bytes) -> None:
        """Handle a message on `ha_status_topic`: re-announce when HA says `online`."""
        if payload.strip() == hd.HA_ONLINE:
            logger.info("Home Assistant is online: re-announcing discovery")
            self.announce_all()

    def forget(self, node_id: str, mounts: Sequence[str] = ()) -> None:
        """Clear a node's discovery in both forms, so HA removes its device and entities.

        `mounts` adds disks known from elsewhere (e.g. stored metrics) when this process
        never saw the node's metrics, so their per-entity topics are cleared too.
        """
        with self._lock:
            node = self._nodes.pop(node_id, None) or _Node()
            self._reported.discard(node_id)
            if self._firing.pop(node_id, None) is not None:
                self._send_alerts()
            shape = hd.NodeShape(
                tuple(node.mounts.union(mounts)), has_throttled=True
            )  # clearing a topic that was never set is harmless
            # Every button too, whatever the node advertised last (or was never seen to).
            # A node never seen has no details: discovery reads only optional keys of them
            # (commands, interval_s, model, agent_version), so a partial one is enough here.
            known: dict[str, object] = dict(node.details or {})
            details = cast(MachineDetails, {**known, "commands": [c for c, *_ in hd.BUTTONS]})
            components = hd.node_components(node_id, details, shape, self._cluster_prefix)
            for message in hd.clear_messages(self._prefix, hd.object_id(node_id), components):
                self._send(message)
            logger.info("cleared Home Assistant discovery for %s", node_id)

    def _announce_cluster(self) -> None:
        messages = hd.discovery_messages(
            self._prefix,
            hd.cluster_object_id(),
            hd.cluster_device(self._sw_version),
            self._origin,
            hd.cluster_components(self._cluster_prefix),
            self._per_entity,
        )
        for message in messages:
            self._send(message)

    def _sync(self, node_id: str, node: _Node, force: bool) -> None:
        # Wait for the first metrics: announcing without the disks would make HA delete
        # those entities (and the user's settings for them) until the next publish.
        details = node.details
        if details is None or not node.shape_known:
            return
        shape = hd.NodeShape(tuple(sorted(node.mounts)), node.has_throttled)
        components = hd.node_components(node_id, details, shape, self._cluster_prefix)
        # The other form is never cleared here: HA gives `<prefix>/sensor/<dev>/<key>` and
        # `cmps.<key>` of `<prefix>/device/<dev>` the same discovery id, so clearing one
        # would delete the entity the other just announced.
        messages = hd.discovery_messages(
            self._prefix,
            hd.object_id(node_id),
            hd.node_device(node_id, details),
            self._origin,
            components,
            self._per_entity,
        )
        digests = [(m, _digest(m.payload)) for m in messages]
        changed = [(m, d) for m, d in digests if force or node.published.get(m.topic) != d]
        for message, digest in changed:
            self._send(message)
            node.published[message.topic] = digest
        if changed and not force:
            logger.info("announced %s to Home Assistant (%d message(s))", node_id, len(changed))

    def _send_alerts(self) -> None:
        # Always the whole map, built and sent under the lock: publishes leave in the order
        # the changes were made, so the last retained one is the current state of every node.
        payload = {"firing": {node: list(rules) for node, rules in sorted(self._firing.items())}}
        envelope = Envelope(hd.ALERTS_TYPE, MASTER_NODE_ID, self._clock(), 0, payload)
        topic = hd.alerts_topic(self._cluster_prefix)
        logger.debug("alerts %s: %s", topic, payload)
        self._publish(topic, encode_envelope(envelope), DISCOVERY_QOS, True)

    def _send(self, message: hd.DiscoveryMessage) -> None:
        logger.debug("discovery %s (%d bytes)", message.topic, len(message.payload))
        self._publish(message.topic, message.payload, DISCOVERY_QOS, True)
