"""A follower's ingest: metrics into history, and kept for the leader's live state.

A follower keeps no live state of its own (its API mirrors the leader's, master_service.peers
.mirror): every valid metrics envelope it receives is stored in history and, in the same
transaction, in `forwarded_metrics`, where the leader takes it. Only then is it acknowledged.
Messages and replies that reach it (from a session that once held the leader's
subscriptions) go to the leader the same way, without history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cluster_protocol import (
    EnvelopeError,
    MessageType,
    RejectCause,
    TopicError,
    decode_envelope,
    parse_topic,
)
from master_service.ingest.fast_decode import decode_metrics
from master_service.ingest.handlers import Context
from master_service.ingest.router import RawMessage, node_of_metrics
from master_service.storage.database import Connection
from master_service.storage.store import HISTORY_WRITERS_LOCK


def forward_batch(
    messages: Sequence[RawMessage],
    ctx: Context,
    failed: Callable[[RawMessage, Exception], None],
) -> None:
    """Queue each valid metrics envelope's history row and the message itself for the leader."""
    counters = ctx.counters
    for raw in messages:
        counters.received += 1
        try:
            forwarded = _forward(raw, ctx)
        except Exception as error:  # a bug: the message is counted and acknowledged
            counters.handler_errors += 1
            failed(raw, error)
            continue
        if forwarded:
            ctx.forwarded.append((raw.topic, raw.payload, raw.received_at))
            counters.accepted += 1


def _forward(raw: RawMessage, ctx: Context) -> bool:
    """True when `raw` goes to the leader (a metrics sample's history row queued too)."""
    node = node_of_metrics(raw.topic, ctx)
    if node is not None:
        sample = _valid_sample(raw, node, ctx)
        if sample is not None:
            ctx.pending_history.append(sample)
        return sample is not None
    counters = ctx.counters
    try:
        parsed = parse_topic(raw.topic, ctx.prefix)
    except TopicError as error:
        counters.reject(error.cause, raw.topic, str(error))
        return False
    if parsed.type in (MessageType.MESSAGE.value, MessageType.REPLY.value):
        # From a session that held the leader's subscriptions (a master that led before it
        # was killed, or one being adopted): the leader may be the only one to have missed it.
        try:
            decode_envelope(raw.payload, parsed.node, parsed.type, raw.received_at)
        except EnvelopeError as error:
            counters.reject(error.cause, raw.topic, str(error))
            return False
        return True
    if parsed.type in (MessageType.STATUS.value, MessageType.MACHINE_DETAILS.value):
        counters.ignored += 1  # retained: the leader gets the latest when it subscribes
        return False
    counters.reject(RejectCause.UNKNOWN_TYPE, raw.topic, f"unknown type {parsed.type!r}")
    return False


def _valid_sample(
    raw: RawMessage, node: str, ctx: Context
) -> tuple[str, float, dict[str, object]] | None:
    """(node, ts, payload) of a valid metrics envelope; None, counted as a reject, otherwise."""
    counters = ctx.counters
    decoded = decode_metrics(raw.payload, node)
    if decoded is not None:
        ts, _, payload = decoded
        return node, ts, payload
    try:  # the long path, for the reason of a reject
        envelope = decode_envelope(raw.payload, node, MessageType.METRICS.value, raw.received_at)
    except EnvelopeError as error:
        counters.reject(error.cause, raw.topic, str(error))
        return None
    return node, envelope.ts, envelope.payload


def share_history_writes(connection: Connection) -> None:
    """A follower's flush guard: hold the history writers' lock shared until the commit."""
    connection.execute("SELECT pg_advisory_xact_lock_shared(?)", (HISTORY_WRITERS_LOCK,))
