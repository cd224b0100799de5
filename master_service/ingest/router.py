"""Route each incoming message by its topic's last level through a table of handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from cluster_protocol import (
    COMMAND_LEVEL,
    MASTER_NODE_ID,
    EnvelopeError,
    MessageType,
    RejectCause,
    TopicError,
    decode_envelope,
    parse_topic,
)
from master_service.ingest.fast_decode import decode_metrics
from master_service.ingest.handlers import (
    Context,
    Incoming,
    handle_machine_details,
    handle_message,
    handle_metrics,
    handle_reply,
    handle_status,
)
from master_service.ingest.observers import notify, notify_metrics
from master_service.state import NodeState, SeqVerdict

logger = logging.getLogger(__name__)

Handler = Callable[[Incoming, Context], None]

HANDLERS: Final[Mapping[MessageType, Handler]] = {
    MessageType.STATUS: handle_status,
    MessageType.MACHINE_DETAILS: handle_machine_details,
    MessageType.METRICS: handle_metrics,
    MessageType.MESSAGE: handle_message,
    MessageType.REPLY: handle_reply,
}


# A dict lookup: calling MessageType(value) costs about a microsecond per message.
_TYPES: Final[Mapping[str, MessageType]] = {member.value: member for member in MessageType}


# Topics seen on the batch path, each with its node, while the table stays this small.
ROUTES_MAX: Final = 100_000


class RawMessage(NamedTuple):
    """A message as the listener got it from the broker (a tuple: cheap to make per message)."""

    topic: str
    payload: bytes
    retained: bool
    received_at: float


def dispatch(raw: RawMessage, ctx: Context) -> bool:
    """Decode, validate, de-duplicate and hand one message to its handler; True if accepted."""
    counters = ctx.counters
    counters.received += 1
    try:
        parsed = parse_topic(raw.topic, ctx.prefix)
    except TopicError as error:
        counters.reject(error.cause, raw.topic, str(error))
        return False
    if parsed.type == COMMAND_LEVEL or parsed.node == MASTER_NODE_ID:
        counters.ignored += 1
        return False
    message_type = _TYPES.get(parsed.type)
    if message_type is None:
        counters.reject(RejectCause.UNKNOWN_TYPE, raw.topic, f"unknown type {parsed.type!r}")
        return False
    try:
        envelope = decode_envelope(raw.payload, parsed.node, parsed.type, raw.received_at)
    except EnvelopeError as error:
        counters.reject(error.cause, raw.topic, str(error))
        return False
    incoming = Incoming(envelope, raw.retained, raw.received_at)
    with ctx.state.lock:
        node = ctx.state.node(envelope.node)
        if message_type != MessageType.STATUS and envelope.seq is not None:
            verdict = node.observe_seq(envelope.seq, raw.retained)
            if verdict == SeqVerdict.DUPLICATE:
                if not raw.retained:  # a retained replay is expected, not a resend
                    node.duplicates += 1
                    counters.duplicates += 1
                return False
        node.received += 1
        ctx.state.dirty.add(envelope.node)
        try:
            HANDLERS[message_type](incoming, ctx)
        except Exception:
            ctx.notices.clear()  # the change they announce may be half made
            counters.handler_errors += 1
            logger.exception("handler for %s failed on %s", message_type.value, raw.topic)
            if ctx.reraise_handler_errors:
                raise
            return False
    counters.accepted += 1
    if ctx.notices:
        # After the lock: observers publish and write, and the API must not wait for them.
        notices, ctx.notices = ctx.notices, []
        notify(ctx.observers, notices, ctx.observer_errors)
    return True


def dispatch_batch(
    messages: Sequence[RawMessage],
    ctx: Context,
    failed: Callable[[RawMessage, Exception], None],
) -> None:
    """Route a batch: metrics in one pass under one lock, anything else through `dispatch`.

    Valid metrics envelopes are decoded by exact types (`decode_metrics`), handled as
    `handle_metrics` would, and each node's latest metrics are encoded once per run of the
    batch instead of once per message. The rest (other types, anything the one-pass decoder
    is not sure of, rejects) goes through `dispatch` one by one, in order. `failed` is told
    of a message whose handling raised; the batch goes on.
    """
    count = len(messages)
    index = 0
    while index < count:
        index = _metrics_run(messages, index, ctx, failed)
        if index < count:
            raw = messages[index]
            index += 1
            try:
                dispatch(raw, ctx)
            except Exception as error:
                failed(raw, error)


def node_of_metrics(topic: str, ctx: Context) -> str | None:
    """The node of a `<prefix>/<node>/metrics` topic (remembered), else None."""
    routes = ctx.routes
    node = routes.get(topic)
    if node is not None:
        return node
    try:
        parsed = parse_topic(topic, ctx.prefix)
    except TopicError:
        return None  # `dispatch` counts the reject
    if parsed.type != MessageType.METRICS or parsed.node == MASTER_NODE_ID:
        return None
    if len(routes) >= ROUTES_MAX:
        routes.clear()
    routes[topic] = parsed.node
    return parsed.node


def _metrics_run(
    messages: Sequence[RawMessage],
    start: int,
    ctx: Context,
    failed: Callable[[RawMessage, Exception], None],
) -> int:
    """Handle the valid metrics envelopes from `start` on; return the index of the first other."""
    state, counters = ctx.state, ctx.counters
    pending, dirty = ctx.pending_history, state.dirty
    observe, routes = bool(ctx.observers), ctx.routes
    store_history = not ctx.history_stored
    latest: dict[str, tuple[NodeState, Any]] = {}  # each node's newest payload in this run
    samples: list[tuple[str, Any]] = []  # (node, payload) owed to the observers
    index, count = start, len(messages)
    received = accepted = 0
    with state.lock:
        try:
            while index < count:
                raw = messages[index]
                node_id = routes.get(raw.topic) or node_of_metrics(raw.topic, ctx)
                if node_id is None:
                    break
                decoded = decode_metrics(raw.payload, node_id)
                if decoded is None:
                    break
                index += 1
                received += 1
                try:
                    ts, seq, payload = decoded
                    retained = raw.retained
                    node = state.node(node_id)
                    if node.observe_seq(seq, retained) is SeqVerdict.DUPLICATE:
                        if not retained:  # a retained replay is expected, not a resend
                            node.duplicates += 1
                            counters.duplicates += 1
                        continue
                    node.received += 1
                    dirty.add(node_id)
                    if not retained:
                        node.last_heard = raw.received_at
                    if store_history:
                        pending.append((node_id, ts, payload))
                    if node.metrics_ts is None or ts >= node.metrics_ts:
                        node.metrics_ts = ts
                        latest[node_id] = (node, payload)
                        if observe:
                            samples.append((node_id, payload))
                    accepted += 1
                except Exception as error:
                    counters.handler_errors += 1
                    failed(raw, error)
        finally:
            counters.received += received
            counters.accepted += accepted
            for node, payload in latest.values():
                node.metrics = payload
    if samples:
        # After the lock, as `dispatch` does: observers publish and write.
        notify_metrics(ctx.observers, samples, ctx.observer_errors)
    return index
