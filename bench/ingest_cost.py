"""Ingest cost per metrics envelope, in-process: the batch path beside the per-message path.

    .venv/bin/python -m bench.ingest_cost                 # 3 rounds of 50,000 envelopes each
    .venv/bin/python -m bench.ingest_cost --messages 20000 --rounds 1

Both paths run the real `Ingestor` loop (`_turn`: take a batch from the inbox, route it,
flush state and history to SQLite every 1,000 rows or when due by time, release the PUBACKs)
on a fresh database, with no observers and no MQTT: what the ingest thread spends per message.
The baseline is the per-message path the master used before (`router.dispatch` for each
message: `decode_envelope`, an `Envelope` and an `Incoming`, the node's metrics re-encoded
per message); the batch path is `router.dispatch_batch`. A third path, "master", is the batch
path inside a whole `MasterService` (built, never connected): its observers (alert engine,
Home Assistant, commands), commit listeners (the API's listing, PUBACK release) and the
Prometheus latency histogram, as the live master runs them. Rounds alternate the paths. CPU
is the ingest thread's `time.thread_time`; wall includes SQLite's fsync at each commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from bench import wire
from master_service.app import MasterService, build
from master_service.ingest import ingestor as ingestor_module
from master_service.ingest import router as router_module
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.ingestor import Ingestor
from master_service.ingest.observers import notify, notify_metrics
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings
from master_service.state import ClusterState
from master_service.storage.store import Store

NODES: Final = 100
T = TypeVar("T")
TARGET_US: Final = 15.0


def make_messages(count: int, nodes: int = NODES) -> list[RawMessage]:
    """`count` v1 metrics envelopes of a Pi 4, round-robin over `nodes`, seq rising per node."""
    payload = json.dumps(wire.METRICS_PAYLOAD, separators=(",", ":")).encode()
    names = [f"bench-{i:04d}" for i in range(nodes)]
    now = time.time()
    messages = []
    for k in range(count):
        node = names[k % nodes]
        body = b'{"v":1,"type":"metrics","node":"%s","ts":%.6f,"seq":%d,"payload":%s}' % (
            node.encode(),
            now + k * 1e-4,
            k // nodes + 1,
            payload,
        )
        messages.append(RawMessage(f"cluster/{node}/metrics", body, False, now))
    return messages


class Split:
    """CPU time of the ingest thread by part: routing, history rows, node rows, commits."""

    PARTS: Final = ("routing", "observers", "history", "node_rows", "commit", "listeners")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    def timed(self, part: str, function: Callable[..., T]) -> Callable[..., T]:
        """`function`, adding its thread CPU time to `part`."""

        def wrapper(*args: Any, **kwargs: Any) -> T:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.thread_time() - started

        return wrapper

    def attach(self, store: Store) -> None:
        """Time the parts of one run (the ingestor module's functions are patched for it)."""
        for name, part in _PATCHED.items():
            setattr(ingestor_module, name, self.timed(part, _ORIGINALS[name]))
        store.append_history = self.timed("history", store.append_history)  # type: ignore[method-assign]
        store.save_nodes = self.timed("node_rows", store.save_nodes)  # type: ignore[method-assign]
        store.commit = self.timed("commit", store.commit)  # type: ignore[method-assign]

    def attach_listeners(self, ingestor: Ingestor) -> None:
        """Time the commit listeners (PUBACK release, the API's listing, ...)."""
        ingestor.commit_listeners[:] = [
            self.timed("listeners", listener) for listener in ingestor.commit_listeners
        ]


# What the ingest thread calls, by module name, and the part each is counted in.
_PATCHED: Final = {"dispatch_batch": "routing", "dispatch": "routing", "insert_history": "history"}
_ORIGINALS: Final[dict[str, Callable[..., Any]]] = {
    name: getattr(ingestor_module, name) for name in _PATCHED
}
# What the router calls to reach the observers, by its module's names.
_NOTIFIERS: Final[dict[str, Callable[..., None]]] = {
    "notify": notify,
    "notify_metrics": notify_metrics,
}


def _run(
    ingestor: Ingestor, ctx: Context, split: Split, messages: list[RawMessage]
) -> dict[str, float]:
    """Feed `messages` through `ingestor`'s loop; CPU and wall microseconds per message."""
    acked = [0]
    ingestor.commit_listeners.append(lambda n: acked.__setitem__(0, acked[0] + n))
    split.attach_listeners(ingestor)
    for name, function in _NOTIFIERS.items():
        vars(router_module)[name] = split.timed("observers", function)
    for message in messages:
        ingestor.queue.put(message)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    try:
        while not ingestor.queue.empty():
            ingestor._turn()
        ingestor.flush()
    finally:
        vars(router_module).update(_NOTIFIERS)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    if acked[0] != len(messages) or ctx.counters.accepted != len(messages):
        raise AssertionError(f"{acked[0]} acknowledged, {ctx.counters.accepted} accepted")
    per = 1e6 / len(messages)
    parts = {f"{part}_us": seconds * per for part, seconds in split.seconds.items()}
    return {"cpu_us": cpu * per, "wall_us": wall * per, **parts}


def run_path(batched: bool, messages: list[RawMessage], workdir: Path) -> dict[str, float]:
    """Feed `messages` through one fresh Ingestor's loop; CPU and wall microseconds each."""
    store = Store(str(workdir / f"ingest-{'batch' if batched else 'base'}-{time.time_ns()}.db"))
    ctx = Context(ClusterState(time.time), IngestCounters())
    ingestor = Ingestor(ctx, store)
    ingestor.batch_dispatch = batched
    split = Split()
    split.attach(store)
    try:
        return _run(ingestor, ctx, split, messages)
    finally:
        store.close()


def run_master_path(messages: list[RawMessage], workdir: Path) -> dict[str, float]:
    """The batch path inside a whole MasterService (observers, listeners), never connected."""
    settings = MasterSettings(
        broker="mqtt://127.0.0.1:9",  # never connected: nothing here needs the broker
        db=str(workdir / f"ingest-master-{time.time_ns()}.db"),
        client_id="bench-ingest-cost",
        log_level="WARNING",
    )
    service: MasterService = build(settings)
    split = Split()
    split.attach(service.store)
    try:
        return _run(service.ingestor, service.ctx, split, messages)
    finally:
        service.store.close()


def measure(count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median over `rounds` of each path, alternating; per-envelope microseconds."""
    messages = make_messages(count)
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "batch": [], "master": []}
    with tempfile.TemporaryDirectory(prefix="ingest-cost-") as tmp:
        run_path(True, messages[:2000], Path(tmp))  # warm-up: imports, caches
        run_master_path(messages[:2000], Path(tmp))
        for _ in range(rounds):
            results["baseline"].append(run_path(False, messages, Path(tmp)))
            results["batch"].append(run_path(True, messages, Path(tmp)))
            results["master"].append(run_master_path(messages, Path(tmp)))
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-envelope cost of both paths and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    figures = measure(args.messages, args.rounds)
    base, batch, master = figures["baseline"], figures["batch"], figures["master"]
    lines = [
        f"== ingest cost per metrics envelope, {args.messages:,} envelopes x {args.rounds} "
        f"rounds, {NODES} nodes (median)",
        f"{'path':<40}{'CPU us':>10}{'wall us':>10}",
        f"{'baseline: dispatch per message':<40}{base['cpu_us']:>10.1f}{base['wall_us']:>10.1f}",
        f"{'batch: dispatch_batch, no observers':<40}{batch['cpu_us']:>10.1f}"
        f"{batch['wall_us']:>10.1f}",
        f"{'master: batch + observers, listeners':<40}{master['cpu_us']:>10.1f}"
        f"{master['wall_us']:>10.1f}",
        f"{'ratio batch / baseline':<40}{batch['cpu_us'] / base['cpu_us']:>10.2f}"
        f"{batch['wall_us'] / base['wall_us']:>10.2f}",
        f"target <= {TARGET_US:.0f} us CPU per envelope (batch): "
        + ("met" if batch["cpu_us"] <= TARGET_US else "MISSED"),
        "CPU us per envelope by part, baseline / batch / master (routing includes observers;",
        "the rest: the loop, the inbox):",
        *(
            f"  {part:<38}{base[part + '_us']:>10.1f}{batch[part + '_us']:>10.1f}"
            f"{master[part + '_us']:>10.1f}"
            for part in Split.PARTS
        ),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
