"""Decides when Home Assistant discovery is (re)published: first sight, change, HA birth, forget.

Never on an ordinary sample: `node_metrics_shape` only publishes when a node shows a mount or
throttling flags not seen before. The shape only grows while the master runs, so an unplugged
USB disk does not delete its entity (and its history settings) every time it blinks.

It also owns the retained `<prefix>/_master/alerts` that the `problem` binary sensors read:
the rules firing per node, always published whole (see `node_alerts`).

Node announcements are paced: at most `window` of them wait for their PUBACK at once (when
`publish` returns paho's receipt), the rest wait here as node ids and are built and sent as
earlier ones are acknowledged. Announcing 10,000 devices at once queued ~7 KB each in paho,
and that high-water mark stayed in the master's memory (bench/README.md, scale).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, cast, runtime_checkable

import orjson

from cluster_protocol import DEFAULT_PREFIX, MASTER_NODE_ID, Envelope, encode_envelope
from cluster_protocol.payloads import MachineDetails
from master_service.home_assistant import discovery as hd

logger = logging.getLogger(__name__)

DISCOVERY_QOS: Final = 1
# Node announcements awaiting their PUBACK at once (one device config is ~7 KB).
DEFAULT_WINDOW: Final = 32
# An acknowledgement not seen by then stops holding the window (a lost connection's messages
# are resent by paho on its own; pacing must never stall discovery for good).
ACK_WAIT_S: Final = 10.0
CONNECT_WAIT_S: Final = 1.0
# With a live client (`connected` given): node announcements per second at most, all built
# on the pacer thread, so ingest never waits for one (each takes ~0.5 ms to build); 10,000
# nodes are announced in about 20 s.
DEFAULT_RATE: Final = 500.0

Publish = Callable[[str, bytes | None, int, bool], object]
"""`publish(topic, payload, qos, retain)`; thread-safe, non-blocking; None or b"" clears.

It may return a `Receipt` (paho's `MQTTMessageInfo`): node announcements are then paced by
their acknowledgements. Anything else counts as acknowledged at once (no pacing).
"""


@runtime_checkable
class Receipt(Protocol):
    """What paho's `publish` returns: whether (and when) the broker acknowledged it."""

    def is_published(self) -> bool:
        """True once acknowledged; raises when it can no longer be."""
        ...

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Block until acknowledged or `timeout`; raises when it can no longer be."""
        ...


def _acknowledged(receipt: Receipt) -> bool:
    try:
        return receipt.is_published()
    except (RuntimeError, ValueError):  # never queued, or sent while disconnected: not ours
        return True


def _await(receipt: Receipt, timeout_s: float) -> None:
    try:
        receipt.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):
        return


@dataclass(slots=True)
class _Node:
    """What the publisher knows about one node, and what it last published for it."""

    details_json: bytes | None = None  # the keys discovery reads (hd.DETAIL_KEYS), as JSON
    mounts: tuple[str, ...] = ()  # sorted; a tuple of two is 56 bytes, a frozenset 216
    has_throttled: bool = False
    shape_known: bool = False
    last_mounts: tuple[str, ...] | None = None  # fast path: the last list seen, as given
    # The digests of (topic, payload) of every message last published, run together: the
    # payloads themselves took ~7 KB per node, a topic -> digest dict ~0.4 KB, this 65 bytes.
    published: bytes = b""

    @property
    def details(self) -> MachineDetails | None:
        """The node's latest machine details (a fresh dict)."""
        if self.details_json is None:
            return None
        # Only ever the bytes of a MachineDetails accepted by node_details.
        return cast(MachineDetails, orjson.loads(self.details_json))


DIGEST_SIZE: Final = 16


def _digest(message: hd.DiscoveryMessage) -> bytes:
    digest = hashlib.blake2b(message.topic.encode(), digest_size=DIGEST_SIZE)
    digest.update(b"\0")
    digest.update(message.payload)
    return digest.digest()


def _digests(published: bytes) -> set[bytes]:
    return {published[at : at + DIGEST_SIZE] for at in range(0, len(published), DIGEST_SIZE)}


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
        window: int = DEFAULT_WINDOW,
        connected: threading.Event | None = None,
        rate: float = DEFAULT_RATE,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
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
        # Pacing: announcements sent and not yet acknowledged (receipt, monotonic time sent),
        # and the nodes still to announce, oldest first (node id -> re-send unchanged too).
        self._window = window
        self._connected = connected
        # Paced (a live client): every announcement through the pacer, `rate` a second.
        self._interval_s = 1.0 / rate if connected is not None else 0.0
        self._idle = threading.Event()  # never set: the pacer's clock for its rate
        self._inflight: deque[tuple[Receipt, float]] = deque()
        self._pending: dict[str, bool] = {}
        self._pacer: threading.Thread | None = None
        self.announced = 0  # node announcements sent (each one or more messages)

    @property
    def pending(self) -> int:
        """Nodes waiting for a place in the window to be announced."""
        with self._lock:
            return len(self._pending)

    @property
    def ha_status_topic(self) -> str:
        """The topic to subscribe to for Home Assistant's birth: `<prefix>/status`."""
        return hd.ha_status_topic(self._prefix)

    def node_details(self, node_id: str, details: MachineDetails) -> None:
        """A machine_details envelope was accepted: publish if the node's config changed."""
        with self._lock:
            node = self._nodes.setdefault(node_id, _Node())
            # Only what discovery reads, as an exact-size copy: the bytes orjson returns keep
            # its buffer's spare capacity (8 KB here, for 0.5 KB of JSON), which held per node
            # was most of the master's memory with discovery on (bench/README.md, scale).
            kept = orjson.dumps({key: details[key] for key in hd.DETAIL_KEYS if key in details})
            if kept == node.details_json:
                return  # what discovery reads is unchanged (a node re-sends them every minute)
            node.details_json = bytes(memoryview(kept))
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
            given = tuple(mounts)
            known = node.shape_known
            grown = not set(node.mounts).issuperset(given) or (
                has_throttled and not node.has_throttled
            )
            if not known or grown:
                node.mounts = tuple(sorted({*node.mounts, *given}))
                node.has_throttled = node.has_throttled or has_throttled
                node.shape_known = True
            # The same object as `mounts` when equal (the usual case): one tuple per node.
            node.last_mounts = node.mounts if given == node.mounts else given
            if known and not grown:
                return
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
            self._pending.pop(node_id, None)
            self._reported.discard(node_id)
            if self._firing.pop(node_id, None) is not None:
                self._send_alerts()
            shape = hd.NodeShape(
                tuple(sorted({*node.mounts, *mounts})), has_throttled=True
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
        if node.details_json is None or not node.shape_known:
            return
        if self._interval_s or self._pending or not self._may_send():
            # Behind the others (first come, first announced); built when sent, so from the
            # latest details and shape.
            self._pending[node_id] = self._pending.get(node_id, False) or force
            self._start_pacer()
            return
        self._announce(node_id, node, force)

    def _may_send(self) -> bool:
        """Connected (when known) and room in the window (call with the lock held)."""
        if self._connected is not None and not self._connected.is_set():
            return False
        inflight = self._inflight
        expired = time.monotonic() - ACK_WAIT_S
        while inflight and (inflight[0][1] < expired or _acknowledged(inflight[0][0])):
            inflight.popleft()
        return len(inflight) < self._window

    def _start_pacer(self) -> None:
        if self._pacer is None:
            self._pacer = threading.Thread(
                target=self._pace, name="picluster-ha-pacer", daemon=True
            )
            self._pacer.start()

    def _pace(self) -> None:
        """Announce pending nodes as the window frees up; ends when none are left."""
        while True:
            with self._lock:
                sent = False
                while self._pending and self._may_send() and not sent:
                    node_id = next(iter(self._pending))
                    force = self._pending.pop(node_id)
                    node = self._nodes.get(node_id)
                    if node is not None:
                        self._announce(node_id, node, force)
                        sent = self._interval_s > 0  # one per interval when rated
                if not self._pending:
                    self._pacer = None
                    return
                oldest = self._inflight[0][0] if self._inflight else None
            if self._connected is not None and not self._connected.is_set():
                self._connected.wait(CONNECT_WAIT_S)
            elif sent:
                self._idle.wait(self._interval_s)  # the rate: ingest keeps the GIL meanwhile
            elif oldest is not None:
                _await(oldest, ACK_WAIT_S)

    def _announce(self, node_id: str, node: _Node, force: bool) -> None:
        details = node.details
        if details is None:
            return
        shape = hd.NodeShape(node.mounts, node.has_throttled)
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
        digests = [(m, _digest(m)) for m in messages]
        published = _digests(node.published)
        changed = [m for m, d in digests if force or d not in published]
        now = time.monotonic()
        for message in changed:
            receipt = self._send(message)
            if isinstance(receipt, Receipt):
                self._inflight.append((receipt, now))
        node.published = b"".join(d for _, d in digests)
        if changed:
            self.announced += 1
            if not force:
                logger.info("announced %s to Home Assistant (%d message(s))", node_id, len(changed))

    def _send_alerts(self) -> None:
        # Always the whole map, built and sent under the lock: publishes leave in the order
        # the changes were made, so the last retained one is the current state of every node.
        payload = {"firing": {node: list(rules) for node, rules in sorted(self._firing.items())}}
        envelope = Envelope(hd.ALERTS_TYPE, MASTER_NODE_ID, self._clock(), 0, payload)
        topic = hd.alerts_topic(self._cluster_prefix)
        logger.debug("alerts %s: %s", topic, payload)
        self._publish(topic, encode_envelope(envelope), DISCOVERY_QOS, True)

    def _send(self, message: hd.DiscoveryMessage) -> object:
        logger.debug("discovery %s (%d bytes)", message.topic, len(message.payload))
        return self._publish(message.topic, message.payload, DISCOVERY_QOS, True)
