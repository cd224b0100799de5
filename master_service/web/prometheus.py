"""Prometheus exposition at /metrics: node gauges and the master's health, read at scrape time.

Names follow the Prometheus naming guide: a `picluster_` prefix, base units in the name
(`_celsius`, `_bytes_per_second`, `_timestamp_seconds`), percentages as `_ratio` from 0 to 1
(the node reports percent; the exporter divides by 100), counters ending in `_total`.
The per-node families come from the metric table (cluster_protocol.metrics), each with its
name, help and scale there; the per-mount filesystem family is built here.
"""

from __future__ import annotations

import functools
import hmac
import io
import logging
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import call
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from fastapi import APIRouter, HTTPException, Security
from fastapi.params import Depends
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster_protocol import METRICS, RejectCause
from master_service.ingest.counters import IngestCounters
from master_service.state import Basis, ClusterState, Delta, NodeFacts, NodeStatus
from master_service.web.errors import error_responses

if TYPE_CHECKING:
    from master_service.ingest.ingestor import Ingestor
    from master_service.ingest.listener import Listener
    from master_service.ingest.observers import Observer, ObserverErrors

logger = logging.getLogger(__name__)

PREFIX: Final = "picluster"
# The classic text format, which every Prometheus version (and Grafana Agent, VictoriaMetrics)
# reads; our names need none of the escaping the newer 1.0.0 format adds.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# From "just arrived" to "sat in a node's spool for an hour": late samples are real latency.
LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                          300.0, 3600.0)  # fmt: skip

# Single-valued per-node families, from the metric table: (metric, its export).
NODE_EXPORTS: Final = tuple((m, m.prometheus) for m in METRICS if m.prometheus is not None)
NODE_READER: Final = "prometheus-nodes"  # the node families' reader of the cluster state


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class IngestErrors:
    """Failures the ingest path survived, read at scrape time (all counters since start)."""

    observers: Mapping[str, int] = field(default_factory=dict)  # by observer class name
    loop: int = 0  # unexpected failures of an ingest loop turn
    dispatch: int = 0  # messages whose dispatch raised on the ingest thread
    store: int = 0  # history flushes that failed (and were retried)
    commit_listeners: int = 0  # commit listeners (PUBACK) that raised; the commit stands
    mqtt_callbacks: int = 0  # paho callbacks (connect, message) that raised

    @classmethod
    def read(
        cls,
        ingestor: Ingestor,
        listener: Listener,
        observer_errors: ObserverErrors,
        observers: Iterable[Observer] = (),
    ) -> IngestErrors:
        """The counters of the running parts; every attached observer shows, failed or not."""
        # Zeros for the observers that never failed: a series that exists from the start
        # lets `increase()` see its first failure.
        by_observer = {type(o).__name__: 0 for o in observers} | observer_errors.snapshot()
        return cls(
            observers=by_observer,
            loop=ingestor.loop_errors,
            dispatch=ingestor.dispatch_errors,
            store=ingestor.store_errors,
            commit_listeners=ingestor.listener_errors,
            mqtt_callbacks=listener.callback_errors,
        )


class ClusterCollector(Collector):
    """The master's own families, read when Prometheus scrapes (the nodes': `NodeExposition`)."""

    def __init__(
        self,
        state: ClusterState,
        counters: IngestCounters,
        master_gauges: Callable[[], Mapping[str, float]] = dict,
        ingest_errors: Callable[[], IngestErrors] = IngestErrors,
    ) -> None:
        self.state = state
        self.counters = counters
        self.master_gauges = master_gauges
        self.ingest_errors = ingest_errors

    def collect(self) -> Iterator[Metric]:
        """The master and error families, read now."""
        yield from master_families(self.counters.snapshot(), self.master_gauges())
        yield from error_families(self.ingest_errors())


def node_families(views: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """Per-node families from the API's node views (a metric the node lacks is left out)."""
    up = GaugeMetricFamily(
        f"{PREFIX}_node_up", "1 when the node is online, else 0", labels=["node"]
    )
    info = GaugeMetricFamily(
        f"{PREFIX}_node_info",
        "Always 1; the node's tags between commas in `tags` (,poe,rack1,), empty with none",
        labels=["node", "tags"],
    )
    state = GaugeMetricFamily(
        f"{PREFIX}_node_state",
        "1 for the node's current state (online, stale, offline, unknown)",
        labels=["node", "state"],
    )
    seen = GaugeMetricFamily(
        f"{PREFIX}_node_last_seen_timestamp_seconds",
        "When the master last heard from the node (Unix time)",
        labels=["node"],
    )
    exported = {
        m.key: (_family(export.type, export.name, export.help), export.scale)
        for m, export in NODE_EXPORTS
    }
    disk = GaugeMetricFamily(
        f"{PREFIX}_node_filesystem_usage_ratio",
        "Share of the filesystem in use, 0-1",
        labels=["node", "mount"],
    )
    gaps = GaugeMetricFamily(
        f"{PREFIX}_node_seq_gaps",
        "Envelopes missing from the node's sequence (falls when late ones arrive)",
        labels=["node"],
    )
    received = CounterMetricFamily(
        f"{PREFIX}_node_messages_received", "Envelopes accepted from the node", labels=["node"]
    )
    duplicates = CounterMetricFamily(
        f"{PREFIX}_node_duplicates", "Duplicate envelopes dropped for the node", labels=["node"]
    )
    for view in views:
        node = str(view["node"])
        up.add_metric([node], 1.0 if view["state"] == NodeStatus.ONLINE else 0.0)
        info.add_metric([node, tags_label(view.get("tags") or ())], 1.0)
        for status in NodeStatus:
            state.add_metric([node, status.value], 1.0 if view["state"] == status else 0.0)
        if (last_seen := _number(view.get("last_seen"))) is not None:
            seen.add_metric([node], last_seen)
        metrics: Mapping[str, Any] = view.get("metrics") or {}
        for key, (family, scale) in exported.items():
            if (value := _number(metrics.get(key))) is not None:
                family.add_metric([node], scaled(value, scale))
        for mount, ratio in _disk_ratios(metrics.get("disks")):
            disk.add_metric([node, mount], ratio)
        counters: Mapping[str, Any] = view.get("counters") or {}
        gaps.add_metric([node], float(counters.get("seq_gaps") or 0))
        received.add_metric([node], float(counters.get("received") or 0))
        duplicates.add_metric([node], float(counters.get("duplicates") or 0))
    yield from (up, info, state, seen, *(family for family, _ in exported.values()), disk, gaps)
    yield from (received, duplicates)


def tags_label(tags: Iterable[str]) -> str:
    """The `tags` label: sorted, each between commas (`,poe,rack1,`); empty with none.

    Commas on both ends let one regex pick a tag wherever it sits: `tags=~".*,rack1,.*"`.
    """
    ordered = sorted(tags)
    return "," + ",".join(ordered) + "," if ordered else ""


def scaled(value: float, scale: float) -> float:
    """`value * scale`, dividing by 1/scale for a scale below 1 (57 % -> 0.57 exactly)."""
    # 57 * 0.01 is 0.5700000000000001, 57 / 100 is 0.57: scales below 1 are 1/n (checked
    # in tests/unit/test_metric_table.py), and division by n keeps the exposition clean.
    return value * scale if scale >= 1 else value / round(1 / scale)


def _family(kind: str, name: str, text: str) -> GaugeMetricFamily | CounterMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=["node"])
    return GaugeMetricFamily(name, text, labels=["node"])


def _disk_ratios(disks: Any) -> Iterable[tuple[str, float]]:
    for disk in disks if isinstance(disks, list) else ():
        if not isinstance(disk, dict) or not isinstance(disk.get("mount"), str):
            continue
        if (percent := _number(disk.get("percent"))) is not None:
            yield disk["mount"], percent / 100.0


def _go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (its `floatToGoString`)."""
    if -1e300 < value < 1e6:  # the common case: repr
        return repr(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@functools.cache
def _family_headers() -> tuple[tuple[str, str], ...]:
    """(HELP and TYPE lines, sample name) of each `node_families` family, in its order."""

    class Empty(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from node_families(())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Empty())
    lines = generate_latest(registry).decode().splitlines()
    return tuple(
        (f"{lines[at]}\n{lines[at + 1]}\n", lines[at + 1].split()[2])
        for at in range(0, len(lines), 2)
    )


class _NodeLines:
    """One node's lines of each family, as prometheus_client writes them ("" for none)."""

    def __init__(self) -> None:
        headers = _family_headers()
        self.headers = [header.encode() for header, _ in headers]
        exported = [(m.key, export.scale) for m, export in NODE_EXPORTS]
        names = [name for _, name in headers]
        self.up, self.info, self.state, self.seen = names[:4]
        value_names = names[4 : 4 + len(exported)]
        self.disk, self.gaps, self.received, self.duplicates = names[4 + len(exported) :]
        # Per state: its family's four lines, the node label left to fill in (`%` each).
        self.state_lines = {
            status: "".join(
                f'{self.state}{{node="%s",state="{each.value}"}} {_one_if(each == status)}\n'
                for each in NodeStatus
            )
            for status in NodeStatus
        }
        # (key, scale, divisor for scales below 1 else 1, sample name)
        self.plain = [
            (key, float(scale), 1 if scale >= 1 else round(1 / scale), name)
            for (key, scale), name in zip(exported, value_names, strict=True)
        ]

    def __call__(self, fact: NodeFacts) -> list[str]:
        """The node's lines, one string per family (several lines or none in some)."""
        node = _label(fact.node)
        label = f'{{node="{node}"}} '
        status = fact.state
        last_seen = fact.last_seen
        lines = [
            f"{self.up}{label}{'1.0' if status == NodeStatus.ONLINE else '0.0'}\n",
            f'{self.info}{{node="{node}",tags="{_label(tags_label(fact.tags))}"}} 1.0\n',
            self.state_lines[status] % ((node,) * len(self.state_lines)),
            "" if last_seen is None else f"{self.seen}{label}{_go_float(float(last_seen))}\n",
        ]
        metrics: Mapping[str, Any] = orjson.loads(fact.metrics_json) if fact.metrics_json else {}
        if not isinstance(metrics, Mapping):
            metrics = {}
        append = lines.append
        for key, multiply, divide, prefix in self.plain:
            value: Any = metrics.get(key)
            kind = value.__class__
            if kind is float or kind is int:  # _number and scaled, inlined: 150,000 calls
                number = value * multiply if divide == 1 else value / divide
                text = repr(number) if -1e300 < number < 1e6 else _go_float(number)
                append(f"{prefix}{label}{text}\n")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                append(f"{prefix}{label}{_go_float(scaled(float(value), multiply))}\n")
            else:
                append("")
        disk = self.disk
        append(
            "".join(
                # Labels in name order, as prometheus_client writes them.
                f'{disk}{{mount="{_label(mount)}",node="{node}"}} {_go_float(ratio)}\n'
                for mount, ratio in _disk_ratios(metrics.get("disks"))
            )
        )
        append(f"{self.gaps}{label}{_go_float(float(fact.seq_gaps or 0))}\n")
        append(f"{self.received}{label}{_go_float(float(fact.received or 0))}\n")
        append(f"{self.duplicates}{label}{_go_float(float(fact.duplicates or 0))}\n")
        return lines


def _one_if(yes: bool) -> str:
    return "1.0" if yes else "0.0"


@functools.cache
def _node_lines() -> _NodeLines:
    return _NodeLines()


def _byte_sizes(text: str, sizes: array[int], family: int, families: int) -> None:
    """Turn one family's sizes in `sizes` from characters of `text` into bytes (UTF-8)."""
    start = 0
    for at in range(family, len(sizes), families):
        end = start + sizes[at]
        sizes[at] = len(text[start:end].encode())
        start = end


@dataclass(frozen=True, slots=True)
class NodeExposition:
    """The node families' text, with where each node's lines are (to write the next from)."""

    basis: Basis
    text: bytes
    starts: list[int]  # per family: where its nodes' lines start in `text`
    ends: list[int]  # and end
    # Node-major: sizes[node * families + family], the bytes of that node's lines there.
    # Sizes, not offsets: a node written to another length moves every offset after it.
    sizes: array[int]


def _write_all(basis: Basis, facts: Sequence[NodeFacts]) -> NodeExposition:
    lines = _node_lines()
    # One growing buffer per family: each node's lines are written and freed at once, so
    # 240,000 lines (10,000 nodes) leave no small blocks behind, only buffers freed whole.
    buffers = [io.StringIO() for _ in lines.headers]
    writes = [buffer.write for buffer in buffers]
    sizes = array("I")  # in characters first: what each write returns
    for fact in facts:
        sizes.extend(map(call, writes, lines(fact)))
    parts: list[bytes] = []
    starts, ends = [], []
    at = 0
    families = len(buffers)
    for family, (header, buffer) in enumerate(zip(lines.headers, buffers, strict=True)):
        text = buffer.getvalue()
        buffer.close()
        if not text.isascii():  # a mount or tag beyond ASCII: its sizes in bytes differ
            _byte_sizes(text, sizes, family, families)
        body = text.encode()
        at += len(header)
        starts.append(at)
        at += len(body)
        ends.append(at)
        parts += (header, body)
    return NodeExposition(basis, b"".join(parts), starts, ends, sizes)


def update_exposition(read: tuple[Delta[NodeExposition], list[NodeFacts]]) -> NodeExposition:
    """The node families for `delta`: changed nodes written, the others copied from before."""
    delta, facts = read
    previous = delta.previous
    if previous is None:
        return _write_all(delta.basis, facts)
    if not delta.positions:
        return NodeExposition(
            delta.basis, previous.text, previous.starts, previous.ends, previous.sizes
        )
    lines = _node_lines()
    families = len(lines.headers)
    rows = [[piece.encode() for piece in lines(fact)] for fact in facts]
    old, old_sizes = memoryview(previous.text), previous.sizes
    sizes = array("I", old_sizes)
    for at, row in zip(delta.positions, rows, strict=True):
        sizes[at * families : (at + 1) * families] = array("I", map(len, row))
    parts: list[bytes | memoryview] = []
    starts, ends = [], []
    written = 0
    for family, header in enumerate(lines.headers):
        parts.append(header)
        written += len(header)
        starts.append(written)
        read_at = previous.starts[family]  # in the old text
        done = 0  # nodes copied or replaced
        for at, row in zip(delta.positions, rows, strict=True):
            if at > done:  # the unchanged run before it, copied as one slice
                run = sum(old_sizes[done * families + family : at * families + family : families])
                parts.append(old[read_at : read_at + run])
                read_at += run
                written += run
            piece = row[family]
            parts.append(piece)
            written += len(piece)
            read_at += old_sizes[at * families + family]
            done = at + 1
        end = previous.ends[family]
        if read_at < end:
            parts.append(old[read_at:end])
            written += end - read_at
        ends.append(written)
    return NodeExposition(delta.basis, b"".join(parts), starts, ends, sizes)


def node_exposition(facts: Sequence[NodeFacts]) -> bytes:
    """The text of `node_families` for these nodes, written directly.

    The same families, samples and format as prometheus_client writes, many times faster at
    10,000 nodes (its generic writer took seconds there; bench/README.md, scale).
    """
    basis = Basis(0, 0, [fact.node for fact in facts], array("d"), float("inf"))
    return _write_all(basis, facts).text


def master_families(snapshot: Mapping[str, Any], gauges: Mapping[str, float]) -> Iterator[Metric]:
    """The master's own health: messages received, accepted, rejected by cause, errors."""
    for name, key, text in (
        ("messages_received", "received", "MQTT messages taken off the queue"),
        ("messages_accepted", "accepted", "Messages that passed validation and were handled"),
        ("duplicates", "duplicates", "Resent envelopes dropped by (node, seq)"),
        ("handler_errors", "handler_errors", "Messages whose handler raised (a bug: see the log)"),
        ("messages_ignored", "ignored", "The master's own topics (commands, its status)"),
    ):
        counter = CounterMetricFamily(f"{PREFIX}_master_{name}", text)
        counter.add_metric([], float(snapshot.get(key) or 0))
        yield counter
    rejected = CounterMetricFamily(
        f"{PREFIX}_master_messages_rejected", "Messages dropped, by cause", labels=["cause"]
    )
    by_cause: Mapping[str, int] = snapshot.get("rejected") or {}
    for cause in sorted({*RejectCause, *by_cause}):
        rejected.add_metric([str(cause)], float(by_cause.get(cause, 0)))
    yield rejected
    for name, value in gauges.items():
        gauge = GaugeMetricFamily(f"{PREFIX}_master_{name}", MASTER_GAUGE_HELP.get(name, name))
        gauge.add_metric([], value)
        yield gauge


MASTER_GAUGE_HELP: Final = {
    "mqtt_connected": "1 while the master is connected to the broker",
    "ingest_queue_depth": "Messages waiting for the ingest thread",
    "healthy": "1 while the ingest path is healthy (/healthz answers 200), else 0",
}


def error_families(errors: IngestErrors) -> Iterator[Metric]:
    """Failures the ingest path survived: per observer, loop, dispatch, store, listeners."""
    observers = CounterMetricFamily(
        f"{PREFIX}_master_observer_errors",
        "Observer calls that raised, by observer (Home Assistant, commands)",
        labels=["observer"],
    )
    for name, count in sorted(errors.observers.items()):
        observers.add_metric([name], float(count))
    yield observers
    for name, count, text in (
        ("ingest_loop_errors", errors.loop, "Ingest loop turns that failed unexpectedly"),
        ("dispatch_errors", errors.dispatch, "Messages whose dispatch raised (see the log)"),
        ("store_errors", errors.store, "History flushes that failed and were retried"),
        ("commit_listener_errors", errors.commit_listeners, "Commit listeners that raised"),
        ("mqtt_callback_errors", errors.mqtt_callbacks, "MQTT client callbacks that raised"),
    ):
        counter = CounterMetricFamily(f"{PREFIX}_master_{name}", text)
        counter.add_metric([], float(count))
        yield counter


class MasterMetrics:
    """The registry /metrics serves, plus the ingest latency histogram fed after each commit."""

    def __init__(
        self,
        state: ClusterState,
        counters: IngestCounters,
        master_gauges: Callable[[], Mapping[str, float]] = dict,
        clock: Callable[[], float] = time.time,
        ingest_errors: Callable[[], IngestErrors] = IngestErrors,
    ) -> None:
        self.clock = clock
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ClusterCollector(state, counters, master_gauges, ingest_errors))
        self.ingest_latency = Histogram(
            f"{PREFIX}_master_ingest_latency_seconds",
            "From a sample's node timestamp to its commit in the history store",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_committed(self, sample_ts: Iterable[float]) -> None:
        """Record the latency of samples just committed (a store commit observer)."""
        now = self.clock()
        for ts in sample_ts:
            # Node clocks can run ahead of ours: count that as no delay rather than negative.
            self.ingest_latency.observe(max(0.0, now - ts))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes: the nodes' families, then the master's."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> tuple[bytes, bytes]:
        """`exposition()` in its two parts, not joined (a copy of megabytes at 10,000 nodes)."""
        return self.node_text(), generate_latest(self.registry)

    def node_text(self) -> bytes:
        """The per-node families, written once per commit generation of the state.

        Only the nodes changed since the last text are written anew, the rest copied from it.
        """
        return self.state.rebuild(NODE_READER, self._read_facts, update_exposition).text

    def _read_facts(
        self, delta: Delta[NodeExposition]
    ) -> tuple[Delta[NodeExposition], list[NodeFacts]]:
        # Under the cluster lock: only the facts are read there, the text is written after.
        now, factor = delta.now, self.state.stale_factor
        return delta, [state.facts(now, factor) for state in delta.states]


# Large bodies (13-14 MB at 10,000 nodes) go out in pieces of this size: handed to asyncio
# whole, they left ~2 KB per node of buffers behind after the answer (bench/README.md, scale).
CHUNK_BYTES: Final = 256 * 1024


def chunked(*parts: bytes) -> Iterator[bytes]:
    """`parts` one after the other, in pieces of at most CHUNK_BYTES (for a streamed body)."""
    for part in parts:
        for start in range(0, len(part), CHUNK_BYTES):
            yield part[start : start + CHUNK_BYTES]


# Module level: FastAPI resolves the (postponed) annotations in this module's namespace.
_metrics_bearer = HTTPBearer(auto_error=False, description="the master's metrics_token")


def metrics_router(metrics: MasterMetrics, token: str | None = None) -> APIRouter:
    """The `/metrics` route; with a token, scrapes must send it as a bearer token."""
    router = APIRouter()
    guarded: list[Depends] = []
    if token:  # an empty metrics_token would let a scrape without one in: it means none
        expected = token.encode()

        def require_token(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_metrics_bearer)],
        ) -> None:
            """Check `Authorization: Bearer <metrics_token>`."""
            given = credentials.credentials.encode() if credentials else b""
            if not hmac.compare_digest(given, expected):
                raise HTTPException(
                    401,
                    "/metrics needs Authorization: Bearer <metrics_token>",
                    headers={"WWW-Authenticate": "Bearer"},
                )

        guarded = [Security(require_token)]

    @router.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        dependencies=guarded,
        responses=error_responses(401) if guarded else {},
    )
    def scrape() -> StreamingResponse:
        """Prometheus exposition (text format 0.0.4)."""
        return StreamingResponse(chunked(*metrics.exposition_parts()), media_type=CONTENT_TYPE)

    return router
