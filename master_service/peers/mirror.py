"""A follower's live view: the leader's node states, read from `nodes` every second.

A follower keeps no state of its own (it sees only its share of the metrics); its API and
dashboard show what the leader saved, at most about a second and a flush behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

from master_service.state import ClusterState
from master_service.storage.node_tags import load_node_tags
from master_service.storage.store import Store

logger = logging.getLogger(__name__)

EVERY_S: Final = 1.0
# Rows are picked by the leader's `updated_at`: read again from this far back, so a head's
# clock a little ahead of the leader's, or a slow commit, never hides a change.
OVERLAP_S: Final = 5.0
FULL_EVERY: Final = 30  # passes between two full reads (nodes forgotten on the leader go)


class NodeMirror:
    """Copies the leader's saved node states, master-side tags (and alerts) into this master."""

    def __init__(
        self,
        state: ClusterState,
        call_in_writer: Callable[[Callable[[Store], None]], None],
        also: Sequence[Callable[[Store], None]] = (),
    ) -> None:
        self.state = state
        self.call_in_writer = call_in_writer
        self.also = also  # more to read again on every pass (the alerts)
        self.refreshed = threading.Event()  # set after every pass (tests, first listing)
        self._since: float | None = None
        self._passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="picluster-mirror", daemon=True)

    def start(self) -> None:
        """Refresh every second from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(EVERY_S):
            # On the ingest thread, which owns the store's connection.
            self.call_in_writer(self.refresh)

    def refresh(self, store: Store) -> None:
        """One pass: changed node states (all of them now and then) and the master tags."""
        full = self._since is None or self._passes % FULL_EVERY == 0
        self._passes += 1
        since = None if full else self._since
        states, newest = store.load_changed_nodes(since)
        self.state.load_master_tags(load_node_tags(store))
        self.state.restore(iter(states))
        if full:
            kept = {s.node for s in states}
            for node in self.state.node_ids():
                if node not in kept:
                    self.state.forget(node)
        for refresh in self.also:
            refresh(store)
        if newest is not None:
            self._since = newest - OVERLAP_S
        elif self._since is None:
            self._since = 0.0
        self.refreshed.set()
