"""One handler per message type; each updates state and queues history (lock held by the router).

Observers are not called here: handlers queue a Notice, and the router delivers the notices
once the cluster lock is released, so a slow or failing observer never holds up the API.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster_protocol import DEFAULT_PREFIX, Envelope
from master_service.ingest.counters import IngestCounters
from master_service.ingest.observers import Notice, Observer, ObserverErrors
from master_service.state import ClusterState, NodeStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded envelope with how it arrived."""

    envelope: Envelope
    retained: bool
    received_at: float


@dataclass(slots=True)
class Context:
    """What handlers may touch: the state, the history queue, the notices for observers."""

    state: ClusterState
    counters: IngestCounters
    prefix: str = DEFAULT_PREFIX
    observers: Sequence[Observer] = ()
    pending_history: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # delivered by the router
    observer_errors: ObserverErrors = field(default_factory=ObserverErrors)
    reraise_handler_errors: bool = False
    # Topic -> node of the metrics topics the batch path has parsed (router.dispatch_batch).
    routes: dict[str, str] = field(default_factory=dict)
    # Several masters (master_service.peers): a follower's metrics messages (topic, payload,
    # received at), stored for the leader with the history rows; and True while the leader
    # routes such messages, whose history a follower has stored already.
    forwarded: list[tuple[str, bytes, float]] = field(default_factory=list)
    history_stored: bool = False


def handle_status(incoming: Incoming, ctx: Context) -> None:
    """Birth or will: online/offline, in the broker's order.

    The sender's ts cannot order these: a will is written at connect time, so it is
    always older than the birth that follows it. A retained copy is the broker's latest.
    """
    envelope = incoming.envelope
    node = ctx.state.node(envelope.node)
    state = envelope.payload["state"]
    if node.status_live and envelope.ts == node.status_ts and state == node.status:
        # The status we took live, delivered again: a site broker's bridge resends its
        # retained messages as live ones each time it reconnects. Taken as a birth, its older
        # seq would restart the node's seq tracking and count every later sample as a gap.
        # (One held only as a retained copy is not a replay: its live copy is the birth.)
        return
    # An `offline` is usually the node's will, sent by the broker when the node was already
    # gone: it says nothing about when the node was last heard (`last_seen`).
    if not incoming.retained and state == NodeStatus.ONLINE:
        node.last_heard = incoming.received_at
        if envelope.seq is not None and node.last_seq is not None and envelope.seq < node.last_seq:
            logger.info("node %s restarted its seq at %d; tracking again", node.node, envelope.seq)
            node.restart_seq(envelope.seq)
    if state != node.status:
        logger.info("node %s is %s", node.node, state)
        node.state_since = incoming.received_at
    node.status, node.status_ts, node.status_live = state, envelope.ts, not incoming.retained
    if ctx.observers:
        ctx.notices.append(Notice("node_status", node.node, (state,)))


def handle_machine_details(incoming: Incoming, ctx: Context) -> None:
    """Keep the node's machine details, in the broker's order (retained: the latest)."""
    envelope = incoming.envelope
    node = ctx.state.node(envelope.node)
    if not incoming.retained:
        node.last_heard = incoming.received_at
    node.details, node.details_ts = envelope.payload, envelope.ts
    if ctx.observers:
        ctx.notices.append(Notice("node_details", node.node, (envelope.payload,)))


def handle_metrics(incoming: Incoming, ctx: Context) -> None:
    """Keep the latest metrics and queue the sample for history (late samples land by ts)."""
    envelope = incoming.envelope
    node = ctx.state.node(envelope.node)
    if not incoming.retained:
        node.last_heard = incoming.received_at
    if not ctx.history_stored:
        ctx.pending_history.append((node.node, envelope.ts, envelope.payload))
    if node.metrics_ts is None or envelope.ts >= node.metrics_ts:
        node.metrics, node.metrics_ts = envelope.payload, envelope.ts
        if ctx.observers:
            ctx.notices.append(Notice("node_metrics", node.node, (envelope.payload,)))


def handle_message(incoming: Incoming, ctx: Context) -> None:
    """Free text from a node, logged as the original design did."""
    node = ctx.state.node(incoming.envelope.node)
    node.last_heard = incoming.received_at
    node.messages += 1
    logger.info("Received message: %s (from %s)", incoming.envelope.payload, node.node)


def handle_reply(incoming: Incoming, ctx: Context) -> None:
    """A node's answer to a command: handed to whoever waits for it."""
    node = ctx.state.node(incoming.envelope.node)
    node.last_heard = incoming.received_at
    if ctx.observers:
        ctx.notices.append(Notice("node_reply", node.node, (incoming.envelope.payload,)))
