"""The real master (MasterService: listener, ingest, state, SQLite history), run as its own process.

No HTTP server: nothing reads the API during the measurement. Latency is sampled at commit
time: a thin wrapper around `Ingestor.flush` notes the `ts` of every metrics row of the batch
and the wall time once the transaction committed.

Prints {"event": "ready"} when the first message (the retained probe) is committed, and writes
a JSON result file once `--target` messages are committed (or the timeout passed).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import re
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import api_timing
from bench.procstat import cpu_seconds, memory_kib, thread_cpu_seconds
from bench.sizes import deep_size
from master_service.app import MasterService, build
from master_service.ingest.mqtt5_listener import Mqtt5Listener
from master_service.ingest.router import RawMessage
from master_service.settings import INGEST_CLIENTS, MasterSettings

RSS_EVERY_S = 2.0
RECEIVE_SAMPLE = 20
TS_PATTERN = re.compile(rb'"ts":([0-9.]+)')


def emit(event: str, **fields: object) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def trimmed_rss_kib() -> int | None:
    """Resident memory after glibc hands its free heap pages back (malloc_trim), or None.

    What the process holds, as opposed to what the allocator keeps cached after a burst.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc_trim(0)
    return memory_kib()["VmRSS"]


class Probe:
    """Commit-time instrumentation of one MasterService."""

    def __init__(self, service: MasterService, target: int) -> None:
        self.service = service
        self.target = target
        self.ready = threading.Event()
        self.done = threading.Event()
        # Per batch: when it committed and how many samples; per sample: its node ts.
        self.batch_at: array[float] = array("d")
        self.batch_size: array[int] = array("l")
        self.sample_ts: array[float] = array("d")
        self.marks: dict[str, float] = {}
        ingestor = service.ingestor
        original_flush = ingestor.flush

        def flush() -> None:
            rows = service.ctx.pending_history
            original_flush()
            if rows:  # the arithmetic waits until the end: keep the ingest thread's share small
                self.batch_at.append(time.time())
                self.batch_size.append(len(rows))
                self.sample_ts.extend([row[1] for row in rows])

        ingestor.flush = flush  # type: ignore[method-assign]
        # Every RECEIVE_SAMPLE-th message: node ts -> handed to the ingest thread by the
        # receiving connection, to tell waiting in the broker and the client apart from
        # waiting for the commit.
        self.received: array[float] = array("d")
        seen = 0

        def sample(message: RawMessage) -> None:
            nonlocal seen
            seen += 1
            if seen % RECEIVE_SAMPLE == 0:
                found = TS_PATTERN.search(message.payload)
                if found:
                    self.received.append(message.received_at - float(found.group(1)))

        receiver = service.receiver
        if isinstance(receiver, Mqtt5Listener):
            submit_many = receiver.submit_many

            def sampled_submit_many(messages: list[RawMessage]) -> None:
                for message in messages:
                    sample(message)
                submit_many(messages)

            receiver.submit_many = sampled_submit_many
        else:
            submit = receiver.submit

            def sampled_submit(message: RawMessage) -> None:
                sample(message)
                submit(message)

            receiver.submit = sampled_submit
        ingestor.commit_listeners.append(self._committed)

    def latencies(self) -> dict[str, list[float]]:
        """Per committed sample: commit wall time and latency (commit time - node ts)."""
        committed_at: list[float] = []
        for at, size in zip(self.batch_at, self.batch_size, strict=True):
            committed_at += [at] * size
        latency = [at - ts for at, ts in zip(committed_at, self.sample_ts, strict=True)]
        return {
            "committed_at": committed_at,
            "latency_s": latency,
            "receive_latency_s": self.received.tolist(),
        }

    def _committed(self, count: int) -> None:
        committed = self.service.ingestor.committed
        if committed >= 1 and not self.ready.is_set():
            self.marks["ready"] = time.time()
            self.ready.set()
        if committed >= self.target and not self.done.is_set():
            self.marks["done"] = time.time()
            self.done.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the master until the target is committed; write the result file."""
    parser = argparse.ArgumentParser(prog="python -m bench.master_proc")
    parser.add_argument("--broker", required=True)
    parser.add_argument(
        "--db", required=True, help="SQLite file or PostgreSQL URL (password: CLUSTER_DB_PASSWORD)"
    )
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-ha", action="store_true", help="turn Home Assistant discovery off")
    parser.add_argument(
        "--ingest-client",
        choices=INGEST_CLIENTS,
        default=MasterSettings().ingest_client,
        help="the client that receives cluster/# (default: the master's default)",
    )
    parser.add_argument("--deep-size", action="store_true", help="measure state size per node")
    parser.add_argument(
        "--api-timing", action="store_true", help="then time GET /api/nodes and /metrics"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = MasterSettings(
        broker=args.broker,
        db=args.db,
        db_password=os.environ.get("CLUSTER_DB_PASSWORD"),
        client_id="bench-master",
        ha_discovery=not args.no_ha,
        ingest_client=args.ingest_client,
        log_level="WARNING",
    )
    service = build(settings)
    probe = Probe(service, args.target)
    service.start()
    if not probe.ready.wait(30):
        emit("error", reason="the probe message was not committed within 30 s")
        return 1
    gc.collect()
    memory_ready = memory_kib()
    trimmed_ready = trimmed_rss_kib()
    cpu_ready = cpu_seconds()
    threads_ready = thread_cpu_seconds()
    emit("ready", t=probe.marks["ready"])
    series: list[tuple[float, int]] = []
    while not probe.done.wait(RSS_EVERY_S):  # resident memory over time: growth vs. nodes
        series.append((time.time(), memory_kib()["VmRSS"]))
        if time.time() - probe.marks["ready"] > args.timeout:
            break
    cpu_done = cpu_seconds()
    threads_done = thread_cpu_seconds()
    time.sleep(0.5)  # let the last flush and HA publishes settle before reading memory
    gc.collect()
    memory_done = memory_kib()
    trimmed_done = trimmed_rss_kib()
    result: dict[str, Any] = {
        "t_ready": probe.marks["ready"],
        "t_done": probe.marks.get("done"),
        "committed": service.ingestor.committed,
        "counters": service.counters.snapshot(),
        "nodes": len(service.state.node_ids()),
        "cpu_s": cpu_done - cpu_ready,
        "thread_cpu_s": {
            name: round(seconds - threads_ready.get(name, 0.0), 3)
            for name, seconds in threads_done.items()
        },
        "rss_ready_kib": memory_ready["VmRSS"],
        "rss_done_kib": memory_done["VmRSS"],
        "hwm_kib": memory_done["VmHWM"],
        "rss_series": series,
        "rss_ready_trimmed_kib": trimmed_ready,
        "rss_done_trimmed_kib": trimmed_done,
        **probe.latencies(),
    }
    if args.deep_size:
        with service.state.lock:
            result["state_bytes"] = deep_size(service.state)
        if service.home_assistant is not None:
            result["ha_bytes"] = deep_size(service.home_assistant)
    if args.api_timing:  # after the memory figures: the listing it builds is not in them
        result["api"] = api_timing.measure(service)
    logging.getLogger().setLevel(logging.CRITICAL)  # the shutdown's own notices are noise here
    service.stop()
    Path(args.out).write_text(json.dumps(result))
    emit("done", t_done=result["t_done"], committed=result["committed"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
