"""The node listing is remade from the last one: only changed nodes are encoded again.

A cluster of a few hundred nodes is driven through the real router and handlers (metrics,
duplicates, gaps, status, details, new nodes, forgotten ones, master tags, time passing so
nodes go stale); after each commit the listing must be byte for byte what encoding every
node now gives, and the build must have been incremental unless the node set changed.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cluster_protocol import Envelope, encode_envelope
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.router import RawMessage, dispatch_batch
from master_service.state import IDLE_READER_S, LISTING_READER, ClusterState

NOW = 1_800_000_000.0
TAGS = ("rack1", "rack2", "poe")
DETAILS: dict[str, Any] = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "ram": 4 * 1024**3,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "interval_s": 10,
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _raise(raw: RawMessage, error: Exception) -> None:
    raise error


class Fleet:
    """Nodes sending envelopes through the real router, and flushes that commit them."""

    def __init__(
        self, seed: int, nodes: int = 300, intervals: tuple[int, ...] = (5, 10, 30)
    ) -> None:
        self.intervals = intervals
        self.clock = Clock(NOW)
        self.state = ClusterState(self.clock, stale_factor=3.0)
        self.ctx = Context(self.state, IngestCounters(self.clock), reraise_handler_errors=True)
        self.rng = random.Random(seed)
        self.seqs: dict[str, int] = {}
        self.batch: list[RawMessage] = []
        self.born = 0
        for _ in range(nodes):
            self.birth()
        self.commit()

    def ids(self) -> list[str]:
        return self.state.node_ids()

    def pick(self) -> str:
        return self.rng.choice(self.ids())

    def send(self, node: str, kind: str, payload: Any, seq: int | None = None) -> None:
        if seq is None:
            seq = self.seqs[node] = self.seqs.get(node, 0) + 1
        data = encode_envelope(Envelope(kind, node, self.clock.now, seq, payload))
        self.batch.append(RawMessage(f"cluster/{node}/{kind}", data, False, self.clock.now))

    def deliver(self) -> None:
        dispatch_batch(self.batch, self.ctx, _raise)
        self.batch = []

    def commit(self) -> None:
        """What a flush does: take the dirty nodes (to save them), then tell the state."""
        self.deliver()
        self.state.take_dirty()
        self.state.committed()

    def metrics(self, node: str) -> None:
        rng = self.rng
        self.send(
            node,
            "metrics",
            {
                "cpu_percent": round(rng.uniform(0, 100), rng.choice((0, 1, 3))),
                "load_1": rng.uniform(0, 4),
                "memory_percent": rng.uniform(0, 100),
                "temperature_celsius": round(rng.uniform(30, 80), 1),
                "net_tx_bytes_per_s": rng.choice((0, 1532.25, 12_345_678.5, 1e300)),
                "uptime_s": rng.randrange(10**7),
                "disks": [
                    {"mount": "/", "total_bytes": 1, "used_bytes": 1, "percent": 17.2},
                    {"mount": "/média/ünï", "total_bytes": 1, "used_bytes": 1, "percent": 9.5},
                ][: rng.randrange(3)],
            },
        )

    def details(self, node: str) -> None:
        tags = self.rng.sample(TAGS, self.rng.randrange(3))
        interval = self.rng.choice(self.intervals)
        self.send(node, "machine_details", {**DETAILS, "interval_s": interval, "tags": tags})

    def birth(self) -> str:
        node = f"pi-{self.born:04d}"
        self.born += 1
        self.send(node, "status", {"state": "online"})
        self.details(node)
        self.metrics(node)
        return node

    def step(self) -> bool:
        """Some random changes; True when the node set changed (only then is a build full)."""
        rng = self.rng
        for node in rng.sample(self.ids(), rng.randrange(1, 12)):
            self.metrics(node)
        nodes_changed = False
        for _ in range(rng.randrange(4)):
            self._one_change()
        if rng.random() < 0.1:
            self.birth()
            nodes_changed = True
        if rng.random() < 0.1:
            self.deliver()
            self.state.forget(self.pick())
            nodes_changed = True
        return nodes_changed

    def _one_change(self) -> None:
        rng = self.rng
        node = self.pick()
        changes: list[Callable[[], None]] = [
            lambda: self.send(node, "metrics", {"cpu_percent": 1.0}, seq=self.seqs[node]),
            lambda: self._gap(node),
            lambda: self.send(node, "status", {"state": rng.choice(("online", "offline"))}),
            lambda: self.details(node),
            lambda: self.send(node, "message", "hello"),
            lambda: self.state.set_master_tags(node, rng.sample(TAGS, rng.randrange(3))),
        ]
        rng.choice(changes)()

    def _gap(self, node: str) -> None:
        self.seqs[node] += self.rng.randrange(2, 5)  # the ones skipped are counted as gaps
        self.metrics(node)


def full_listing(state: ClusterState, tags: tuple[str, ...] = ()) -> bytes:
    """Every node encoded now, one by one: what a listing built from scratch holds."""
    wanted = set(tags)
    views = []
    for node_id in state.node_ids():
        node = state.get(node_id)
        assert node is not None
        if wanted.issubset(node.tags):
            view = state.node_json(node_id)
            assert view is not None
            views.append(view)
    return b"[" + b",".join(views) + b"]"


def builds(state: ClusterState, kind: str) -> int:
    return state.builds[LISTING_READER, kind]


@pytest.mark.parametrize("seed", range(4))
def test_each_commit_gives_the_listing_built_from_scratch(seed: int) -> None:
    fleet = Fleet(seed)
    state = fleet.state
    assert state.nodes_json() == full_listing(state)
    for _ in range(60):
        nodes_changed = fleet.step()
        if fleet.rng.random() < 0.3:
            # Some go stale. Never exactly on a node's turn: there every read builds anew.
            fleet.clock.now += fleet.rng.uniform(0.5, 45.0)
        fleet.commit()
        full, incremental = builds(state, "full"), builds(state, "incremental")

        assert state.nodes_json() == full_listing(state)
        assert state.nodes_json(("rack1",)) == full_listing(state, ("rack1",))
        assert state.nodes_json(("rack2", "poe")) == full_listing(state, ("rack2", "poe"))
        # Made once for the commit, from the last one unless nodes came or went.
        assert builds(state, "full") == full + nodes_changed
        assert builds(state, "incremental") == incremental + (not nodes_changed)


def test_nodes_going_stale_by_time_alone_are_encoded_again_without_a_commit() -> None:
    fleet = Fleet(seed=7, nodes=50, intervals=(10,))
    state = fleet.state
    first = state.nodes_json()
    fleet.clock.now += 5.0  # half the nodes are heard again a little later
    for node in fleet.ids()[::2]:
        fleet.metrics(node)
    fleet.commit()
    state.nodes_json()

    fleet.clock.now = NOW + 31.0  # past 3 intervals for the others only
    listing = json.loads(state.nodes_json())

    assert {view["state"] for view in listing[1::2]} == {"stale"}
    assert {view["state"] for view in listing[::2]} == {"online"}
    assert state.nodes_json() == full_listing(state)
    assert first != state.nodes_json()
    assert builds(state, "incremental") == 2


def test_a_duplicate_only_counts_yet_shows_after_the_commit() -> None:
    fleet = Fleet(seed=3, nodes=20)
    state = fleet.state
    state.nodes_json()
    node = fleet.pick()

    fleet.send(node, "metrics", {"cpu_percent": 1.0}, seq=fleet.seqs[node])  # a resend
    fleet.commit()

    views = {view["node"]: view for view in json.loads(state.nodes_json())}
    assert views[node]["counters"]["duplicates"] == 1
    assert builds(state, "incremental") == 1


def test_a_change_not_yet_committed_stays_out_of_the_listing() -> None:
    fleet = Fleet(seed=5, nodes=20)
    state = fleet.state
    before = state.nodes_json()
    node = fleet.pick()

    fleet.metrics(node)
    fleet.deliver()  # handled, not committed
    assert state.nodes_json() is before

    fleet.commit()
    assert state.nodes_json() == full_listing(state) != before


def test_an_unread_listing_is_dropped_and_the_next_one_built_in_full() -> None:
    fleet = Fleet(seed=11, nodes=20)
    state = fleet.state
    state.nodes_json()
    fleet.metrics(fleet.pick())
    fleet.commit()
    state.nodes_json()
    assert (builds(state, "full"), builds(state, "incremental")) == (1, 1)

    fleet.clock.now += IDLE_READER_S + 1  # nobody reads it for five minutes
    fleet.metrics(fleet.pick())
    fleet.commit()  # drops the last listing

    assert state.nodes_json() == full_listing(state)
    assert (builds(state, "full"), builds(state, "incremental")) == (2, 1)


def test_a_listing_that_failed_under_the_lock_loses_no_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The encoder runs with the cluster lock held, after the changes were taken: a failure
    # there must not leave the last listing to be copied with the changed node's old bytes.
    fleet = Fleet(seed=12, nodes=20)
    state = fleet.state
    state.nodes_json()
    fleet.metrics(fleet.pick())
    fleet.commit()

    def failing(delta: object) -> object:
        raise MemoryError("no room for the listing")

    with monkeypatch.context() as patched:
        patched.setattr(state, "_encode_listing", failing)
        with pytest.raises(MemoryError):
            state.nodes_json()
    fleet.metrics(fleet.pick())
    fleet.commit()

    assert state.nodes_json() == full_listing(state)


def test_reloaded_tags_and_restored_nodes_show_at_once() -> None:
    fleet = Fleet(seed=9, nodes=20)
    state = fleet.state
    state.nodes_json()
    tagged = fleet.pick()

    state.load_master_tags({tagged: ["rack9"]})
    assert state.nodes_json(("rack9",)) == full_listing(state, ("rack9",))
    assert [view["node"] for view in json.loads(state.nodes_json(("rack9",)))] == [tagged]

    other = Fleet(seed=10, nodes=3)
    restored = [other.state.get(node) for node in other.ids()]
    state.restore(node for node in restored if node is not None)
    assert state.nodes_json() == full_listing(state)
    assert builds(state, "full") == 3


def test_readers_racing_a_busy_ingest_still_end_on_the_listing_built_from_scratch() -> None:
    fleet = Fleet(seed=13, nodes=200)
    state = fleet.state
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(len(json.loads(state.nodes_json())))
                json.loads(state.nodes_json(("rack1",)))
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch every 10 us, not 5 ms: races show far more
    for reader in readers:
        reader.start()
    try:
        for _ in range(150):
            for node in fleet.rng.sample(fleet.ids(), 10):
                fleet.metrics(node)
            if fleet.rng.random() < 0.2:
                fleet.state.set_master_tags(fleet.pick(), ["rack1"])
            fleet.commit()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        sys.setswitchinterval(interval)

    assert not errors
    assert set(seen) == {200}
    assert state.nodes_json() == full_listing(state)
    assert state.nodes_json(("rack1",)) == full_listing(state, ("rack1",))
