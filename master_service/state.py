"""Per-node state and the cluster view, pure: no I/O, the clock is injected."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

DEFAULT_INTERVAL_S: Final = 10.0
MAX_TRACKED_MISSING: Final = 10_000  # seqs still hoped for per node; beyond that only counted


class NodeStatus(StrEnum):
    """What the dashboard and API say about a node."""

    ONLINE = "online"
    STALE = "stale"  # says online, but nothing heard for stale_factor x its interval
    OFFLINE = "offline"
    UNKNOWN = "unknown"  # heard of, but never its status


class SeqVerdict(StrEnum):
    """What a sequence number means for a node's stream."""

    NEW = "new"
    LATE = "late"  # fills an earlier gap (spooled data, reordering)
    DUPLICATE = "duplicate"
    RESTARTED = "restarted"  # the node lost its counter; tracking begins again


@dataclass(slots=True)
class NodeState:
    """Everything the master knows about one node."""

    node: str
    status: str = NodeStatus.UNKNOWN  # last state the node (or its will) announced
    status_ts: float | None = None  # sender ts of that announcement
    state_since: float | None = None
    last_heard: float | None = None  # master clock: last envelope of any kind
    details: dict[str, Any] | None = None
    details_ts: float | None = None
    metrics: dict[str, Any] | None = None
    metrics_ts: float | None = None
    last_seq: int | None = None
    # Shared empty default: a set per node costs 216 bytes, and most nodes never miss a seq.
    missing: set[int] | frozenset[int] = frozenset()
    received: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    messages: int = 0

    @property
    def interval_s(self) -> float:
        """The node's sampling interval, from its machine details."""
        value = (self.details or {}).get("interval_s")
        return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_INTERVAL_S

    def observe_seq(self, seq: int) -> SeqVerdict:
        """Account for one sequence number: new, late (fills a gap), or a duplicate."""
        if self.last_seq is None:
            self.last_seq = seq
            return SeqVerdict.NEW
        if seq > self.last_seq:
            skipped = seq - self.last_seq - 1
            if skipped:
                self.seq_gaps += skipped
                room = MAX_TRACKED_MISSING - len(self.missing)
                if room > 0:
                    missing = self._mutable_missing()
                    missing.update(range(self.last_seq + 1, self.last_seq + 1 + min(skipped, room)))
            self.last_seq = seq
            return SeqVerdict.NEW
        if seq in self.missing:
            missing = self._mutable_missing()
            missing.discard(seq)
            if not missing:
                self.missing = frozenset()
            self.seq_gaps -= 1
            return SeqVerdict.LATE
        return SeqVerdict.DUPLICATE

    def _mutable_missing(self) -> set[int]:
        if not isinstance(self.missing, set):
            self.missing = set(self.missing)
        return self.missing

    def restart_seq(self, seq: int) -> None:
        """The node's counter went backwards on a fresh birth: start tracking again from it."""
        self.last_seq = seq
        self.missing = frozenset()

    def effective_status(self, now: float, stale_factor: float) -> NodeStatus:
        """Online, stale, offline or unknown, as of `now` (master clock)."""
        if self.status == NodeStatus.OFFLINE:
            return NodeStatus.OFFLINE
        silent_for = now - self.last_heard if self.last_heard is not None else float("inf")
        if silent_for > stale_factor * self.interval_s:
            return NodeStatus.STALE if self.status == NodeStatus.ONLINE else NodeStatus.UNKNOWN
        # A node of the original design never sends status: being heard is all we have.
        return NodeStatus.ONLINE

    def view(self, now: float, stale_factor: float) -> dict[str, Any]:
        """The node as the API shows it."""
        return {
            "node": self.node,
            "state": self.effective_status(now, stale_factor).value,
            "last_seen": self.last_heard,
            "state_since": self.state_since,
            "details": self.details,
            "details_ts": self.details_ts,
            "metrics": self.metrics,
            "metrics_ts": self.metrics_ts,
            "counters": {
                "received": self.received,
                "duplicates": self.duplicates,
                "seq_gaps": self.seq_gaps,
                "last_seq": self.last_seq,
                "messages": self.messages,
            },
        }


class ClusterState:
    """All nodes, guarded by one lock: the ingest thread writes, the API reads snapshots."""

    def __init__(self, clock: Callable[[], float], stale_factor: float = 3.0) -> None:
        self.clock = clock
        self.stale_factor = stale_factor
        self.lock = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self.dirty: set[str] = set()

    def node(self, node_id: str) -> NodeState:
        """The state of a node, created on first sight (call with the lock held)."""
        state = self._nodes.get(node_id)
        if state is None:
            state = self._nodes[node_id] = NodeState(node=node_id)
        return state

    def get(self, node_id: str) -> NodeState | None:
        """A node's state, or None when it was never heard of."""
        return self._nodes.get(node_id)

    def restore(self, states: Iterator[NodeState]) -> None:
        """Load states saved by a previous run."""
        with self.lock:
            for state in states:
                self._nodes[state.node] = state

    def forget(self, node_id: str) -> bool:
        """Drop a node; True when it was known."""
        with self.lock:
            self.dirty.discard(node_id)
            return self._nodes.pop(node_id, None) is not None

    def node_ids(self) -> list[str]:
        """Ids of every known node, sorted."""
        with self.lock:
            return sorted(self._nodes)

    def view(self, node_id: str) -> dict[str, Any] | None:
        """One node as the API shows it, or None."""
        with self.lock:
            state = self._nodes.get(node_id)
            return None if state is None else state.view(self.clock(), self.stale_factor)

    def views(self) -> list[dict[str, Any]]:
        """Every node as the API shows it, sorted by id."""
        now = self.clock()
        with self.lock:
            return [self._nodes[n].view(now, self.stale_factor) for n in sorted(self._nodes)]

    def summary(self) -> dict[str, Any]:
        """Cluster totals: nodes by state, cores and RAM, average CPU and load of live nodes."""
        views = self.views()
        counts = {status.value: 0 for status in NodeStatus}
        cores = ram = 0
        cpu: list[float] = []
        load: list[float] = []
        for view in views:
            counts[view["state"]] += 1
            details = view["details"] or {}
            cores += int(details.get("cpu_cores") or 0)
            ram += int(details.get("ram") or 0)
            metrics = view["metrics"] or {}
            if view["state"] == NodeStatus.ONLINE:
                if isinstance(metrics.get("cpu_percent"), int | float):
                    cpu.append(float(metrics["cpu_percent"]))
                if isinstance(metrics.get("load_1"), int | float):
                    load.append(float(metrics["load_1"]))
        return {
            "nodes_total": len(views),
            "online": counts[NodeStatus.ONLINE],
            "offline": counts[NodeStatus.OFFLINE],
            "stale": counts[NodeStatus.STALE],
            "unknown": counts[NodeStatus.UNKNOWN],
            "cores_total": cores,
            "ram_total_bytes": ram,
            "cpu_percent_avg": round(sum(cpu) / len(cpu), 2) if cpu else None,
            "load_1_avg": round(sum(load) / len(load), 3) if load else None,
        }
