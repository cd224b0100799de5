"""Hooks other parts of the master (Home Assistant, commands) attach to the ingest path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Observer:
    """Called on the ingest thread after state changed; keep every method quick."""

    def node_details(self, node: str, details: Mapping[str, Any]) -> None:
        """A node's machine details were accepted."""

    def node_metrics(self, node: str, payload: Mapping[str, Any]) -> None:
        """A node's metrics were accepted."""

    def node_status(self, node: str, state: str) -> None:
        """A node announced online or offline (or its will did)."""

    def node_reply(self, node: str, reply: Mapping[str, Any]) -> None:
        """A node answered a command."""

    def node_forgotten(self, node: str) -> None:
        """A node was removed with `cluster-master forget`."""
