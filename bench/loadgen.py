"""Load generator: N simulated nodes publishing v1 envelopes at QoS 1, run as its own process.

Each node first announces itself (retained status and machine_details, like a real node on
connect), then sends metrics with its own increasing `seq`. Every envelope's `ts` is the wall
time its chunk was written to the socket, so `commit time - ts` is the end-to-end latency.

Prints one JSON line when the first byte goes out ({"event": "start", ...}) and one when the
broker has acknowledged everything ({"event": "done", ...}).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import wire

CHUNK_MAX = 500  # messages per socket write when running flat out


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send: nodes, how many metrics in all, at what rates (0 = as fast as possible)."""

    nodes: int
    metrics: int
    rate: float
    births: bool
    birth_rate: float
    interval_s: float
    node_prefix: str = "bn"

    def node_ids(self) -> list[str]:
        """The simulated node ids."""
        width = max(5, len(str(self.nodes)))
        return [f"{self.node_prefix}-{i:0{width}d}" for i in range(self.nodes)]

    @property
    def total(self) -> int:
        """Every message the plan sends."""
        return self.metrics + (2 * self.nodes if self.births else 0)


class AckCounter(threading.Thread):
    """Reads the broker's PUBACKs (4 bytes each in MQTT 3.1.1) and counts them."""

    def __init__(self, sock: object) -> None:
        super().__init__(name="acks", daemon=True)
        self.sock = sock
        self.bytes = 0
        self.closed = False

    @property
    def acked(self) -> int:
        """PUBACKs received so far."""
        return self.bytes // 4

    def run(self) -> None:
        """Count until the socket closes."""
        recv = self.sock.recv  # type: ignore[attr-defined]
        while True:
            try:
                chunk = recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.bytes += len(chunk)


def emit(event: str, **fields: object) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def paced_chunks(total: int, rate: float, chunk_max: int = CHUNK_MAX):  # type: ignore[no-untyped-def]
    """Yield chunk sizes so that `total` messages go out at `rate` per second (0: at once)."""
    sent = 0
    start = time.monotonic()
    while sent < total:
        if rate <= 0:
            size = min(chunk_max, total - sent)
        else:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            size = min(chunk_max, due - sent)
            if size <= 0:
                time.sleep(min(0.002, (sent + 1 - due) / rate + 0.0005))
                continue
        sent += size
        yield size


def run(plan: Plan, host: str, port: int, client_id: str) -> dict[str, float | int]:
    """Send the plan; return timings once every message is acknowledged."""
    nodes = plan.node_ids()
    metrics_topics = [wire.topic_field(f"cluster/{n}/metrics") for n in nodes]
    payload = json.dumps(wire.METRICS_PAYLOAD, separators=(",", ":")).encode()
    sock = wire.open_connection(host, port, client_id)
    acks = AckCounter(sock)
    acks.start()
    packet_id = 0
    started = time.time()
    emit("start", t=started)

    def next_id() -> int:
        nonlocal packet_id
        packet_id = packet_id % 65535 + 1
        return packet_id

    if plan.births:
        birth_index = 0
        for size in paced_chunks(plan.nodes, plan.birth_rate):
            now = time.time()
            parts = []
            for node in nodes[birth_index : birth_index + size]:
                status = wire.envelope_bytes("status", node, now, 0, {"state": "online"})
                details = wire.envelope_bytes(
                    "machine_details", node, now, 1, wire.details_payload(node, plan.interval_s)
                )
                parts.append(
                    wire.publish_packet(
                        wire.topic_field(f"cluster/{node}/status"), next_id(), status, True
                    )
                )
                parts.append(
                    wire.publish_packet(
                        wire.topic_field(f"cluster/{node}/machine_details"),
                        next_id(),
                        details,
                        True,
                    )
                )
            birth_index += size
            sock.sendall(b"".join(parts))
    metrics_started = time.time()
    index = 0
    count = plan.nodes
    for size in paced_chunks(plan.metrics, plan.rate):
        ts = b"%.6f" % time.time()
        parts = []
        for k in range(index, index + size):
            node_index = k % count
            body = b'{"v":1,"type":"metrics","node":"%s","ts":%s,"seq":%d,"payload":%s}' % (
                nodes[node_index].encode(),
                ts,
                k // count + 2,
                payload,
            )
            parts.append(wire.publish_packet(metrics_topics[node_index], next_id(), body))
        index += size
        sock.sendall(b"".join(parts))
    sent_at = time.time()
    deadline = time.monotonic() + 120
    while acks.acked < plan.total and not acks.closed and time.monotonic() < deadline:
        time.sleep(0.005)
    acked_at = time.time()
    sock.sendall(b"\xe0\x00")
    sock.close()
    return {
        "t_start": started,
        "t_metrics_start": metrics_started,
        "t_sent": sent_at,
        "t_acked": acked_at,
        "sent": plan.total,
        "acked": acks.acked,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see --help."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=100_000, help="metrics messages in all")
    parser.add_argument("--rate", type=float, default=0.0, help="metrics per second; 0: flat out")
    parser.add_argument("--births", action="store_true", help="status + details for every node")
    parser.add_argument("--birth-rate", type=float, default=0.0, help="nodes announced per s")
    parser.add_argument("--interval", type=float, default=10.0, help="interval_s in the details")
    parser.add_argument("--node-prefix", default="bn")
    parser.add_argument("--client-id", default="bench-loadgen")
    args = parser.parse_args(argv)
    plan = Plan(
        nodes=args.nodes,
        metrics=args.metrics,
        rate=args.rate,
        births=args.births,
        birth_rate=args.birth_rate,
        interval_s=args.interval,
        node_prefix=args.node_prefix,
    )
    emit("done", **run(plan, args.host, args.port, args.client_id))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
