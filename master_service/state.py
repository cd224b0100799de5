"""Per-node state and the cluster view, pure: no I/O, the clock is injected."""

from __future__ import annotations

import io
import threading
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import accumulate
from typing import Any, Final, Generic, NamedTuple, Protocol, TypedDict, TypeVar, cast

import orjson

from cluster_protocol.payloads import ClusterSummary, MachineDetails, MetricsPayload
from cluster_protocol.settings import DEFAULT_INTERVAL_S
from cluster_protocol.tags import valid_tags

T = TypeVar("T")

MAX_TRACKED_MISSING: Final = 10_000  # seqs still hoped for per node; beyond that only counted
# A reader (the listing, /metrics) keeps its last build to make the next one from only while
# it is read: unread this long (state clock), the build is dropped and the next one is full.
IDLE_READER_S: Final = 300.0
LISTING_READER: Final = "listing"
_NEVER: Final = float("inf")


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


_FRAGMENT: Final[Any] = getattr(orjson, "Fragment", None)  # pre-encoded JSON, orjson >= 3.10


class NodeCounters(TypedDict):
    """A node's delivery counters, as the API shows them."""

    received: int
    duplicates: int
    seq_gaps: int
    last_seq: int | None
    messages: int


class NodeView(TypedDict):
    """One node as `GET /api/nodes` shows it."""

    node: str
    state: str
    last_seen: float | None
    state_since: float | None
    details: MachineDetails | None
    details_ts: float | None
    metrics: MetricsPayload | None
    metrics_ts: float | None
    counters: NodeCounters
    tags: list[str]  # own and master-side, sorted
    own_tags: list[str]  # from the node's machine details
    master_tags: list[str]  # set on the master (`cluster-master nodes tag`)


class RawNodeView(TypedDict):
    """`NodeView` with details and metrics still JSON bytes (taken under the cluster lock)."""

    node: str
    state: str
    last_seen: float | None
    state_since: float | None
    details: bytes | None
    details_ts: float | None
    metrics: bytes | None
    metrics_ts: float | None
    counters: NodeCounters
    tags: list[str]
    own_tags: list[str]
    master_tags: list[str]


def _encode(value: MachineDetails | MetricsPayload | None) -> bytes | None:
    # An exact-size copy: the buffer orjson returns keeps its spare capacity, which, held for
    # every node, cost 8 KiB of RSS per node instead of the 0.8 KiB the JSON needs.
    return None if value is None else bytes(memoryview(orjson.dumps(value)))


def _decode(data: bytes | None) -> Any:
    # Any: the bytes are a payload that passed its schema before it was encoded; the typed
    # accessors below say which.
    return None if data is None else orjson.loads(data)


def _interval(details: MachineDetails | None) -> float:
    value = details.get("interval_s") if details else None
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_INTERVAL_S


@dataclass(slots=True, init=False)
class NodeState:
    """Everything the master knows about one node.

    The latest `details` and `metrics` are held as their JSON encoding and decoded when read:
    as dicts they took about 3 KiB per node, as bytes about 1 KiB (bench/README.md, scale run
    with 10,000 nodes). Reading either returns a fresh dict; assign to change it.
    """

    node: str
    status: str
    status_ts: float | None  # sender ts of the last announcement
    status_live: bool  # that announcement came live (not as a retained copy), or in a record
    state_since: float | None
    last_heard: float | None  # master clock: last envelope of any kind
    details_json: bytes | None
    details_ts: float | None
    metrics_json: bytes | None
    metrics_ts: float | None
    last_seq: int | None
    seq_base: int | None  # first seq received live since tracking (re)started
    seq_floor: int | None  # lowest seq received live since then (below the base: spooled)
    missing: set[int] | frozenset[int]
    received: int
    duplicates: int
    seq_gaps: int
    messages: int
    interval_s: float  # from the details, kept apart so staleness checks need no decoding
    own_tags: tuple[str, ...]  # from the details too, for the same reason (sorted, valid)
    master_tags: tuple[str, ...]  # set on the master; kept in the node_tags table, not here

    def __init__(
        self,
        node: str,
        status: str = NodeStatus.UNKNOWN,
        status_ts: float | None = None,
        state_since: float | None = None,
        last_heard: float | None = None,
        details: MachineDetails | None = None,
        details_ts: float | None = None,
        metrics: MetricsPayload | None = None,
        metrics_ts: float | None = None,
        last_seq: int | None = None,
        missing: Iterable[int] = (),
        seq_base: int | None = None,
        seq_floor: int | None = None,
        received: int = 0,
        duplicates: int = 0,
        seq_gaps: int = 0,
        messages: int = 0,
        master_tags: Iterable[str] = (),
    ) -> None:
        self.node = node
        self.master_tags = tuple(sorted(set(master_tags)))
        self.status = status  # last state the node (or its will) announced
        self.status_ts = status_ts
        # A restored announcement was taken in an earlier run: a copy of it now is a replay.
        self.status_live = status_ts is not None
        self.state_since = state_since
        self.last_heard = last_heard
        self.details = details
        self.details_ts = details_ts
        self.metrics = metrics
        self.metrics_ts = metrics_ts
        self.last_seq = last_seq
        # None in a record saved before they existed: then nothing below last_seq is new.
        self.seq_base = seq_base
        self.seq_floor = seq_floor
        # A shared empty frozenset: a set per node costs 216 bytes, most nodes never miss a seq.
        self.missing = set(missing) if missing else frozenset()
        self.received = received
        self.duplicates = duplicates
        self.seq_gaps = seq_gaps
        self.messages = messages

    @property
    def details(self) -> MachineDetails | None:
        """The node's latest machine details (a fresh dict)."""
        return cast(MachineDetails | None, _decode(self.details_json))

    @details.setter
    def details(self, value: MachineDetails | None) -> None:
        self.details_json = _encode(value)
        self.interval_s = _interval(value)
        self.own_tags = valid_tags(value.get("tags")) if value else ()

    @property
    def tags(self) -> tuple[str, ...]:
        """The node's own and master-side tags, sorted, each once."""
        if not self.master_tags:
            return self.own_tags
        if not self.own_tags:
            return self.master_tags
        return tuple(sorted({*self.own_tags, *self.master_tags}))

    @property
    def metrics(self) -> MetricsPayload | None:
        """The node's latest metrics payload (a fresh dict)."""
        return cast(MetricsPayload | None, _decode(self.metrics_json))

    @metrics.setter
    def metrics(self, value: MetricsPayload | None) -> None:
        self.metrics_json = _encode(value)

    def record_json(self) -> bytes:
        """`record()` encoded as JSON, with details and metrics copied in without decoding."""
        if _FRAGMENT is None:  # orjson before 3.10
            return orjson.dumps(self.record())
        record = self.record(decode=False)
        for key in ("details", "metrics"):
            if record[key] is not None:
                record[key] = _FRAGMENT(record[key])
        return orjson.dumps(record)

    def record(self, decode: bool = True) -> dict[str, Any]:
        """Everything needed to rebuild this state: `NodeState(**record)`.

        With `decode=False`, details and metrics stay the JSON bytes they are kept as.
        """
        return {
            "node": self.node,
            "status": self.status,
            "status_ts": self.status_ts,
            "state_since": self.state_since,
            "last_heard": self.last_heard,
            "details": self.details if decode else self.details_json,
            "details_ts": self.details_ts,
            "metrics": self.metrics if decode else self.metrics_json,
            "metrics_ts": self.metrics_ts,
            "last_seq": self.last_seq,
            "missing": sorted(self.missing),
            "seq_base": self.seq_base,
            "seq_floor": self.seq_floor,
            "received": self.received,
            "duplicates": self.duplicates,
            "seq_gaps": self.seq_gaps,
            "messages": self.messages,
        }

    def observe_seq(self, seq: int, retained: bool = False) -> SeqVerdict:
        """Account for one sequence number: new, late (fills a gap), or a duplicate.

        A gap is an envelope that was meant for the master and never came, so gaps are
        counted only between envelopes received live. A `retained` one is the broker's replay
        of a node's last status or details on subscribe, possibly sent long before the master
        (or this node's current run) existed: it is never the start of the count.
        """
        if not retained:
            if self.last_seq is None:
                self.last_seq = self.seq_base = self.seq_floor = seq
                return SeqVerdict.NEW
            if seq > self.last_seq:
                skipped = seq - self.last_seq - 1
                if skipped:
                    self.seq_gaps += skipped
                    self._track(self.last_seq + 1, skipped)
                self.last_seq = seq
                return SeqVerdict.NEW
        if seq in self.missing:
            self._fill(seq)
            return SeqVerdict.LATE
        if retained:
            if self.last_seq is not None and self._lowest() <= seq <= self.last_seq:
                return SeqVerdict.DUPLICATE  # the copy of one received live
            return SeqVerdict.NEW  # news, but it starts and advances nothing
        if self.seq_floor is not None and seq < self.seq_floor:
            # Taken before the first envelope we got live but delivered after it: a node
            # sends its birth details before draining its spool. The seqs between it and the
            # floor may follow; they are awaited, not counted as gaps (they predate the base).
            self._track(seq + 1, self.seq_floor - seq - 1)
            self.seq_floor = seq
            return SeqVerdict.LATE
        return SeqVerdict.DUPLICATE

    def _lowest(self) -> float:
        # A record saved before seq_floor existed: everything up to last_seq counts as seen.
        return float("-inf") if self.seq_floor is None else self.seq_floor

    def _track(self, first: int, count: int) -> None:
        """Remember up to the bound `count` seqs from `first` as still to come."""
        room = MAX_TRACKED_MISSING - len(self.missing)
        if count > 0 and room > 0:
            self._mutable_missing().update(range(first, first + min(count, room)))

    def _fill(self, seq: int) -> None:
        missing = self._mutable_missing()
        missing.discard(seq)
        if not missing:
            self.missing = frozenset()
        # Seqs below the base were never counted as gaps (see observe_seq).
        if self.seq_base is None or seq > self.seq_base:
            self.seq_gaps -= 1

    def _mutable_missing(self) -> set[int]:
        if not isinstance(self.missing, set):
            self.missing = set(self.missing)
        return self.missing

    def restart_seq(self, seq: int) -> None:
        """The node's counter went backwards to `seq` on a fresh birth: count again from scratch.

        The birth's seq is not the base: the node's spool, sent after it, may hold lower ones.
        The next envelope received live is.
        """
        self.last_seq = self.seq_base = self.seq_floor = None
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

    def status_turns_at(self, now: float, stale_factor: float) -> float | None:
        """When (master clock) `effective_status` changes with no news from the node, if ever."""
        if self.status == NodeStatus.OFFLINE or self.last_heard is None:
            return None
        turns_at = self.last_heard + stale_factor * self.interval_s
        return turns_at if turns_at >= now else None

    def fragment_view(self, now: float, stale_factor: float) -> Any:
        """`view()` ready for orjson: details and metrics as their pre-encoded JSON fragments."""
        if _FRAGMENT is None:  # orjson before 3.10
            return self.view(now, stale_factor)
        details, metrics = self.details_json, self.metrics_json
        return {
            "node": self.node,
            "state": self.effective_status(now, stale_factor),  # a StrEnum: orjson writes it
            "last_seen": self.last_heard,
            "state_since": self.state_since,
            "details": None if details is None else _FRAGMENT(details),
            "details_ts": self.details_ts,
            "metrics": None if metrics is None else _FRAGMENT(metrics),
            "metrics_ts": self.metrics_ts,
            "counters": {
                "received": self.received,
                "duplicates": self.duplicates,
                "seq_gaps": self.seq_gaps,
                "last_seq": self.last_seq,
                "messages": self.messages,
            },
            "tags": self.tags,
            "own_tags": self.own_tags,
            "master_tags": self.master_tags,
        }

    def facts(self, now: float, stale_factor: float) -> NodeFacts:
        """What an exporter reads of this node, as of `now` (metrics still encoded)."""
        return NodeFacts(
            self.node,
            self.effective_status(now, stale_factor),
            self.tags,
            self.last_heard,
            self.metrics_json,
            self.seq_gaps,
            self.received,
            self.duplicates,
        )

    def view(self, now: float, stale_factor: float) -> NodeView:
        """The node as the API shows it."""
        return _decoded(self.raw_view(now, stale_factor))

    def raw_view(self, now: float, stale_factor: float) -> RawNodeView:
        """`view()` with details and metrics still encoded: cheap enough under the cluster lock.

        The bytes are immutable, so they can be decoded (`_decoded`) after the lock is released.
        """
        return {
            "node": self.node,
            "state": self.effective_status(now, stale_factor).value,
            "last_seen": self.last_heard,
            "state_since": self.state_since,
            "details": self.details_json,
            "details_ts": self.details_ts,
            "metrics": self.metrics_json,
            "metrics_ts": self.metrics_ts,
            "counters": {
                "received": self.received,
                "duplicates": self.duplicates,
                "seq_gaps": self.seq_gaps,
                "last_seq": self.last_seq,
                "messages": self.messages,
            },
            "tags": list(self.tags),
            "own_tags": list(self.own_tags),
            "master_tags": list(self.master_tags),
        }


class NodeFacts(NamedTuple):
    """What an exporter reads of one node (`ClusterState.facts`): metrics still encoded."""

    node: str
    state: NodeStatus
    tags: tuple[str, ...]
    last_seen: float | None
    metrics_json: bytes | None
    seq_gaps: int
    received: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Basis:
    """Which nodes a reader's build shows, in which order, and until when it holds."""

    generation: int  # the state's generation when it was made
    epoch: int  # the node set (and everyone's master tags) it was made with
    ids: list[str]  # every node id, sorted
    turns: array[float]  # per node: when its state turns by time alone (inf: not by time)
    expires_at: float  # the first of them


class Built(Protocol):
    """A reader's build: what it shows, made from a `Basis`."""

    @property
    def basis(self) -> Basis:
        """The nodes and times it was made from."""
        ...


B = TypeVar("B", bound=Built)


@dataclass(frozen=True, slots=True)
class Delta(Generic[B]):
    """What a reader must remake of its last build (`ClusterState.rebuild`)."""

    now: float
    basis: Basis  # of the build to make
    previous: B | None  # the build to copy every other node from; None: make it in full
    positions: list[int]  # ascending, in basis.ids: the nodes to (re)make (every one if full)
    states: list[NodeState]  # theirs, in the same order (read them under the cluster lock)


@dataclass(eq=False, slots=True)
class _Reader:
    """One reader's last build and the nodes changed since it was made."""

    read_at: float  # state clock
    built: Any = None
    changed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one build at a time


@dataclass(frozen=True, slots=True)
class _Listing:
    """Every node's view, encoded once per commit generation (`ClusterState.nodes_json`)."""

    basis: Basis
    body: bytes  # the JSON array of every view, sorted by node id
    # Per node: its view's size plus one (the "," or "]" after it); it starts at 1 + the sum
    # of the sizes before it. Sizes, not offsets: a node re-encoded to another length moves
    # every offset after it, its size alone changes.
    sizes: array[int]
    tags: list[tuple[str, ...]]  # per node

    def spans(self) -> Iterator[tuple[tuple[str, ...], int, int]]:
        """(tags, start, end) of each node's view in `body`, in order."""
        starts = accumulate(self.sizes, initial=1)
        for node_tags, start, size in zip(self.tags, starts, self.sizes, strict=False):
            yield node_tags, start, start + size - 1


def _same(value: T) -> T:
    return value


def _positions(basis: Basis, changed: Iterable[str], now: float) -> list[int] | None:
    """Where in `basis` the changed nodes and those turned by time since are; None: unknown."""
    ids, count = basis.ids, len(basis.ids)
    found = set()
    for node_id in changed:
        at = bisect_left(ids, node_id)
        if at == count or ids[at] != node_id:
            return None  # not in the build: only a full one shows it
        found.add(at)
    if now >= basis.expires_at:
        found.update(at for at, turns_at in enumerate(basis.turns) if turns_at <= now)
    return sorted(found)


def _decoded(raw: RawNodeView) -> NodeView:
    return {
        **raw,
        "details": _decode(raw["details"]),
        "metrics": _decode(raw["metrics"]),
    }


class ClusterState:
    """All nodes, guarded by one lock: the ingest thread writes, the API reads snapshots."""

    def __init__(self, clock: Callable[[], float], stale_factor: float = 3.0) -> None:
        self.clock = clock
        self.stale_factor = stale_factor
        self.lock = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self.dirty: set[str] = set()
        # Master-side tags by node, also of nodes not heard yet (tagged before they connect).
        self._master_tags: dict[str, tuple[str, ...]] = {}
        # Bumped when a flush committed (`committed`) or nodes or tags changed outside one:
        # the node listing the API serves is rebuilt once per generation, not per request.
        self.generation = 0
        # Readers' builds are remade from their last one, only the nodes changed since anew
        # (`rebuild`). `_touched` holds who ingest or the API changed since the readers last
        # took note; bumping `_epoch` (a node added or dropped, every tag reloaded) makes the
        # next build of each reader a full one.
        self._epoch = 0
        self._touched: set[str] = set()
        self._readers: dict[str, _Reader] = {}
        self.builds: Counter[tuple[str, str]] = Counter()  # (reader, "full"/"incremental")

    def committed(self, count: int = 0) -> None:
        """A flush committed ingest's changes (a commit listener): listings are out of date."""
        with self.lock:
            self._changed()

    def _changed(self) -> None:
        # With the lock held. A reader's last build is kept (the next is made from it) only
        # while it is read: one unread for IDLE_READER_S is dropped, with the payloads it holds.
        self.generation += 1
        self._note_touched()
        if self._readers:
            now = self.clock()
            for name, reader in list(self._readers.items()):
                if now - reader.read_at > IDLE_READER_S:
                    del self._readers[name]

    def _note_touched(self) -> None:
        # With the lock held: every reader learns who changed since it last took note.
        touched = self._touched
        if touched:
            for reader in self._readers.values():
                reader.changed |= touched
            touched.clear()

    def take_dirty(self) -> list[str]:
        """The nodes changed since the last call (to be saved), now forgotten as dirty.

        They are noted as changed for the readers' next builds too.
        """
        with self.lock:
            dirty = list(self.dirty)
            self.dirty.clear()
            self._touched.update(dirty)
            return dirty

    def node(self, node_id: str) -> NodeState:
        """The state of a node, created on first sight (call with the lock held)."""
        state = self._nodes.get(node_id)
        if state is None:
            state = self._nodes[node_id] = NodeState(
                node=node_id, master_tags=self._master_tags.get(node_id, ())
            )
            self._epoch += 1
        # Whoever asks for a node may change it (a duplicate only counts, and is not dirty).
        self._touched.add(node_id)
        return state

    def load_master_tags(self, tags: Mapping[str, Iterable[str]]) -> None:
        """Set every node's master-side tags (as stored), replacing what was known."""
        with self.lock:
            self._master_tags = {node: tuple(sorted(set(t))) for node, t in tags.items() if t}
            for node_id, state in self._nodes.items():
                state.master_tags = self._master_tags.get(node_id, ())
            self._epoch += 1
            self._changed()

    def set_master_tags(self, node_id: str, tags: Iterable[str]) -> None:
        """Replace one node's master-side tags (known or not yet heard of)."""
        settled = tuple(sorted(set(tags)))
        with self.lock:
            if settled:
                self._master_tags[node_id] = settled
            else:
                self._master_tags.pop(node_id, None)
            state = self._nodes.get(node_id)
            if state is not None:
                state.master_tags = settled
                self._touched.add(node_id)
            self._changed()

    def master_tags(self, node_id: str) -> tuple[str, ...]:
        """One node's master-side tags, sorted (the node need not be known yet)."""
        with self.lock:
            return self._master_tags.get(node_id, ())

    def get(self, node_id: str) -> NodeState | None:
        """A node's state, or None when it was never heard of."""
        return self._nodes.get(node_id)

    def restore(self, states: Iterator[NodeState]) -> None:
        """Load states saved by a previous run."""
        with self.lock:
            for state in states:
                state.master_tags = self._master_tags.get(state.node, state.master_tags)
                self._nodes[state.node] = state
            self._epoch += 1
            self._changed()

    def forget(self, node_id: str) -> bool:
        """Drop a node; True when it was known."""
        with self.lock:
            self.dirty.discard(node_id)
            self._master_tags.pop(node_id, None)
            self._epoch += 1
            self._changed()
            return self._nodes.pop(node_id, None) is not None

    def node_ids(self) -> list[str]:
        """Ids of every known node, sorted."""
        with self.lock:
            return sorted(self._nodes)

    def view(self, node_id: str) -> NodeView | None:
        """One node as the API shows it, or None."""
        with self.lock:
            state = self._nodes.get(node_id)
            raw = None if state is None else state.raw_view(self.clock(), self.stale_factor)
        return None if raw is None else _decoded(raw)

    def node_json(self, node_id: str) -> bytes | None:
        """One node's view as JSON, read now (no decoding), or None when never heard of."""
        with self.lock:
            state = self._nodes.get(node_id)
            if state is None:
                return None
            view = state.fragment_view(self.clock(), self.stale_factor)
        return orjson.dumps(view)

    def nodes_json(self, tags: Collection[str] = ()) -> bytes:
        """Every node's view as a JSON array sorted by id; with `tags`, nodes having all of them.

        Served from a listing built once per generation: everything a committed flush
        changed is in the next one, and a node's state turning stale by time alone also
        rebuilds it. Details and metrics are copied in as the JSON they are kept as.
        """
        listing = self.rebuild(LISTING_READER, self._encode_listing, _same)
        if not tags:
            return listing.body
        wanted = set(tags)
        body = memoryview(listing.body)
        chosen = [body[a:b] for node_tags, a, b in listing.spans() if wanted.issubset(node_tags)]
        return b"[" + b",".join(chosen) + b"]"

    def rebuild(
        self, reader: str, under_lock: Callable[[Delta[B]], T], after: Callable[[T], B]
    ) -> B:
        """`reader`'s build of the state now: its last one while it holds, else remade from it.

        A build holds for its generation and until a node's state turns by time alone.
        `under_lock` reads the `Delta` (the nodes changed since the last build, or all of
        them) with the cluster lock held, `after` makes the build from that without it.
        """
        now = self.clock()
        with self.lock:
            found = self._readers.get(reader)
            if found is None:
                found = self._readers[reader] = _Reader(now)
            found.read_at = now
            built = found.built
            if built is not None and self._holds(built.basis, now):
                return cast(B, built)
        with found.lock:  # one build per reader at a time: each takes the changes it makes
            try:
                with self.lock:
                    built = found.built
                    if built is not None and self._holds(built.basis, now):
                        return cast(B, built)  # another request just made it
                    delta: Delta[B] = self._delta(found, now)
                    self.builds[reader, "full" if delta.previous is None else "incremental"] += 1
                    read = under_lock(delta)
                made = after(read)
            except BaseException:
                found.built = None  # its changes were taken: the next build is a full one
                raise
            found.built = made
        return made

    def _holds(self, basis: Basis, now: float) -> bool:
        return basis.generation == self.generation and now < basis.expires_at

    def _delta(self, reader: _Reader, now: float) -> Delta[B]:
        """What `reader` must remake (lock held): the nodes changed or turned since its build."""
        self._note_touched()
        changed, reader.changed = reader.changed, set()
        previous = reader.built
        positions = None
        if previous is not None and previous.basis.epoch == self._epoch:
            positions = _positions(previous.basis, changed, now)
        if positions is None:  # in full
            previous = None
            ids = sorted(self._nodes)
            turns = array("d", [_NEVER]) * len(ids)
            positions = list(range(len(ids)))
        else:
            ids = previous.basis.ids
            turns = array("d", previous.basis.turns)
        nodes, factor = self._nodes, self.stale_factor
        states = [nodes[ids[at]] for at in positions]
        offline = NodeStatus.OFFLINE
        for at, state in zip(positions, states, strict=True):
            # Inlined status_turns_at: when this node's state turns by time alone.
            if state.status != offline and state.last_heard is not None:
                turns_at = state.last_heard + factor * state.interval_s
                turns[at] = turns_at if turns_at >= now else _NEVER
            else:
                turns[at] = _NEVER
        expires_at = min(turns) if turns else _NEVER
        basis = Basis(self.generation, self._epoch, ids, turns, expires_at)
        return Delta(now, basis, previous, positions, states)

    def _encode_listing(self, delta: Delta[_Listing]) -> _Listing:
        """The listing of `delta` (lock held): changed nodes encoded, the others copied."""
        now, factor, dumps = delta.now, self.stale_factor, orjson.dumps
        previous, count = delta.previous, len(delta.basis.ids)
        if previous is None:
            # Encoded at once, under the lock, and written straight into one buffer: no view
            # dict, piece or orjson buffer (which keeps spare capacity) outlives its node, so
            # building 10,000 of them triggers no garbage collection, leaves no small blocks.
            buffer = io.BytesIO()
            buffer.write(b"[")
            sizes = array("I")
            tags = []
            for at, state in enumerate(delta.states, 1):
                size = buffer.write(dumps(state.fragment_view(now, factor)))
                buffer.write(b"," if at < count else b"]")
                sizes.append(size + 1)
                tags.append(state.tags)
            body = buffer.getvalue() if count else b"[]"
            return _Listing(delta.basis, body, sizes, tags)
        if not delta.positions:
            return _Listing(delta.basis, previous.body, previous.sizes, previous.tags)
        old, old_sizes = memoryview(previous.body), previous.sizes
        sizes, tags = array("I", old_sizes), list(previous.tags)
        parts: list[bytes | memoryview] = [b"["]
        read = 1  # in the old body
        done = 0  # old nodes copied or replaced
        for at, state in zip(delta.positions, delta.states, strict=True):
            if at > done:  # the unchanged run before it, copied as one slice
                run = sum(old_sizes[done:at])
                parts.append(old[read : read + run])
                read += run
            view = dumps(state.fragment_view(now, factor))
            parts.append(view)
            parts.append(b"," if at + 1 < count else b"]")
            read += old_sizes[at]
            sizes[at] = len(view) + 1
            tags[at] = state.tags
            done = at + 1
        if done < count:
            parts.append(old[read:])  # with the closing bracket
        return _Listing(delta.basis, b"".join(parts), sizes, tags)

    def facts(self) -> tuple[int, float, list[NodeFacts]]:
        """(generation, when a node's state next turns by time alone, every node's facts).

        Sorted by node id. An exporter may keep what it makes of them while the generation
        is the same and the clock before that time.
        """
        now = self.clock()
        factor = self.stale_factor
        expires_at = float("inf")
        with self.lock:
            rows = []
            for node_id in sorted(self._nodes):
                state = self._nodes[node_id]
                rows.append(state.facts(now, factor))
                turns_at = state.status_turns_at(now, factor)
                if turns_at is not None and turns_at < expires_at:
                    expires_at = turns_at
            return self.generation, expires_at, rows

    def views(self) -> list[NodeView]:
        """Every node as the API shows it, sorted by id."""
        now = self.clock()
        with self.lock:
            raws = [self._nodes[n].raw_view(now, self.stale_factor) for n in sorted(self._nodes)]
        return [_decoded(raw) for raw in raws]

    def summary(self) -> ClusterSummary:
        """Cluster totals: nodes by state, cores and RAM, average CPU and load of live nodes."""
        now = self.clock()
        with self.lock:
            raws = [
                (
                    node.effective_status(now, self.stale_factor),
                    node.details_json,
                    node.metrics_json,
                )
                for node in self._nodes.values()
            ]
        counts = {status.value: 0 for status in NodeStatus}
        cores = ram = 0
        cpu: list[float] = []
        load: list[float] = []
        # One node decoded at a time: decoding every node's view at once (as views() must)
        # was a transient of ~4 KiB per node every 10 s, which RSS kept as its high-water mark.
        for status, details_json, metrics_json in raws:
            counts[status] += 1
            details = _decode(details_json) or {}
            cores += int(details.get("cpu_cores") or 0)
            ram += int(details.get("ram") or 0)
            if status == NodeStatus.ONLINE:
                metrics = _decode(metrics_json) or {}
                if isinstance(metrics.get("cpu_percent"), int | float):
                    cpu.append(float(metrics["cpu_percent"]))
                if isinstance(metrics.get("load_1"), int | float):
                    load.append(float(metrics["load_1"]))
        return {
            "nodes_total": len(raws),
            "online": counts[NodeStatus.ONLINE],
            "offline": counts[NodeStatus.OFFLINE],
            "stale": counts[NodeStatus.STALE],
            "unknown": counts[NodeStatus.UNKNOWN],
            "cores_total": cores,
            "ram_total_bytes": ram,
            "cpu_percent_avg": round(sum(cpu) / len(cpu), 2) if cpu else None,
            "load_1_avg": round(sum(load) / len(load), 3) if load else None,
        }
