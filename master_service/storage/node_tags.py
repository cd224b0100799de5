"""The `node_tags` table: master-side tags, written through the ingest thread's writer.

Like the command log (storage/command_log.py), every change is a task run by the single
writer in its next transaction. Once that is committed, the node's tags in the cluster state
are replaced by the set the transaction saw, so the API, Prometheus and the alert engine see
the change; tags are read from the state, never from the table, after start.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from master_service.state import ClusterState
from master_service.storage.command_log import Writer
from master_service.storage.store import Store

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S: Final = 30.0  # the writer commits within a flush; longer means it is stuck


class TagWriteError(RuntimeError):
    """The writer did not commit a tag change in time (the master is not storing)."""


def load_node_tags(store: Store) -> dict[str, tuple[str, ...]]:
    """Every node's master-side tags as stored, sorted (read at start, before ingest runs)."""
    found: dict[str, list[str]] = {}
    for node, tag in store.connection.execute("SELECT node, tag FROM node_tags ORDER BY 1, 2"):
        found.setdefault(node, []).append(tag)
    return {node: tuple(tags) for node, tags in found.items()}


def delete_node_tags(store: Store, node: str) -> None:
    """Drop a forgotten node's tags (run on the writer thread, in its transaction)."""
    store.connection.execute("DELETE FROM node_tags WHERE node = ?", (node,))


class NodeTags:
    """Adds and removes master-side tags: stored first, then shown in the cluster state."""

    def __init__(self, write: Writer, state: ClusterState) -> None:
        self._write = write
        self._state = state
        # One change at a time: each applies the set its own transaction saw, so two changes
        # finishing out of order must not put an older set back.
        self._lock = threading.Lock()

    def add(self, node: str, tag: str) -> bool:
        """Tag a node (known or not yet heard of); False when it already had the tag."""
        return self._change(
            node, tag, "INSERT INTO node_tags (node, tag) VALUES (?, ?) ON CONFLICT DO NOTHING"
        )

    def remove(self, node: str, tag: str) -> bool:
        """Remove a master-side tag; False when the node did not have it."""
        return self._change(node, tag, "DELETE FROM node_tags WHERE node = ? AND tag = ?")

    def tags(self, node: str) -> tuple[str, ...]:
        """A node's master-side tags, sorted."""
        return self._state.master_tags(node)

    def _change(self, node: str, tag: str, statement: str) -> bool:
        def task(store: Store) -> tuple[bool, tuple[str, ...]]:
            changed = store.connection.execute(statement, (node, tag)).rowcount == 1
            rows = store.connection.execute(
                "SELECT tag FROM node_tags WHERE node = ? ORDER BY tag", (node,)
            ).fetchall()
            return changed, tuple(row[0] for row in rows)

        with self._lock:
            future = self._write(task)
            try:
                changed, tags = future.result(timeout=WRITE_TIMEOUT_S)
            except TimeoutError as error:
                raise TagWriteError(f"the tag change for {node} was not stored in time") from error
            self._state.set_master_tags(node, tags)
        if changed:
            logger.info("node %s: tags now %s", node, ", ".join(tags) or "none (master-side)")
        return changed
