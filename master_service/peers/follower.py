"""A follower's ingest: metrics into history, and kept for the leader's live state.

A follower keeps no live state of its own (its API mirrors the leader's, master_service.peers
.mirror): every valid metrics envelope it receives is stored in history and, in the same
transaction, in `forwarded_metrics`, where the leader takes it. Only then is it acknowledged.
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
            sample = _valid_sample(raw, ctx)
        except Exception as error:  # a bug: the message is counted and acknowledged
            counters.handler_errors += 1
            failed(raw, error)
            continue
        if sample is None:
            continue
        node, ts, payload = sample
        ctx.pending_history.append((node, ts, payload))
        ctx.forwarded.append((raw.topic, raw.payload, raw.received_at))
        counters.accepted += 1


def _valid_sample(raw: RawMessage, ctx: Context) -> tuple[str, float, dict[str, object]] | None:
    """(node, ts, payload) of a valid metrics envelope; None, counted as a reject, otherwise."""
    counters = ctx.counters
    node = node_of_metrics(raw.topic, ctx)
    if node is None:
        try:
            parsed = parse_topic(raw.topic, ctx.prefix)
        except TopicError as error:
            counters.reject(error.cause, raw.topic, str(error))
            return None
        # Only the shared metrics subscription brings messages here.
        counters.reject(RejectCause.UNKNOWN_TYPE, raw.topic, f"not metrics: {parsed.type!r}")
        return None
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
