"""Alert delivery latency: metrics envelope published -> the webhook's POST, end to end.

A real Mosquitto, the real `cluster-master run` with a json:// channel to a local HTTP
receiver and a rule `cpu_percent above 50, for 0`; crafted metrics envelopes cross and
uncross the threshold on many nodes (each fires at most 4 times, under the flapping limit).
Latency = publish -> the receiver's POST, per firing notification; beside it, publish -> the
master's `alert` envelope (sent once the change is committed). See bench/README.md, "Alerts".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from bench import wire
from bench.alert_engine import progress
from bench.broker import BenchBroker
from bench.loadgen import AckCounter
from bench.sections import Row
from bench.stats import percentile

DELIVERY_RULE: Final = "cpu_high"
DELIVERY_PATH: Final = "hook"
FIRINGS_PER_NODE: Final = 4  # the 5th firing within 10 minutes would count as flapping (muted)
HOT_CPU: Final = 90.0
COOL_CPU: Final = 10.0


@dataclass(frozen=True, slots=True)
class Post:
    """One notification the receiver got."""

    at: float
    title: str


class Receiver:
    """The webhook: an http.server on 127.0.0.1 that notes when each POST arrives."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()  # on arrival, before the body is read
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.changed:
                    receiver.posts.append(Post(at, str(body.get("title", ""))))
                    receiver.changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` POSTs arrived; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while len(self.posts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class AlertWatcher:
    """Notes when the master's `alert` envelopes (published once committed) arrive."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: list[tuple[float, str, str, str]] = []  # (at, node, rule, kind)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-alert-watcher", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda client, *_: client.subscribe("cluster/_master/alert", 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        self.client.connect(host, port)
        self.client.loop_start()

    def _message(self, _client: Any, _userdata: Any, message: Any) -> None:
        at = time.time()
        event = json.loads(message.payload)["payload"]
        self.seen.append((at, event["node"], event["rule"], event["event"]))

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _config(path: Path, port: int) -> Path:
    path.write_text(
        "[alerts]\n"
        f'channels = ["json://127.0.0.1:{port}/{DELIVERY_PATH}"]\n\n'
        "[[alerts.rules]]\n"
        f'name = "{DELIVERY_RULE}"\n'
        'metric = "cpu_percent"\n'
        "above = 50\n"
        "for = 0\n"
    )
    return path


def delivery_latency(workdir: Path, nodes: int, rate: float) -> tuple[dict[str, Any], list[Row]]:
    """Publish -> webhook POST for each firing, through a real broker, master and Apprise."""
    from tests.support.processes import start_master  # the tests' way to run the real master
    from tests.support.waiting import wait_until

    workdir.mkdir(parents=True, exist_ok=True)
    broker = BenchBroker(workdir / "broker")
    broker.start()
    receiver = Receiver()
    watcher: AlertWatcher | None = None
    master = None
    sock = None
    try:
        config = _config(workdir / "master.toml", receiver.port)
        master = start_master(broker.url, workdir / "master", "--config", str(config))
        watcher = AlertWatcher(broker.host, broker.port)
        if not watcher.subscribed.wait(10):
            raise RuntimeError("the alert watcher did not subscribe")
        ids = [f"al-{i:05d}" for i in range(nodes)]
        sock = wire.open_connection(broker.host, broker.port, "bench-alerts")
        acks = AckCounter(sock)
        acks.start()
        packet_ids = iter(range(1, 1 << 30))
        seqs = dict.fromkeys(ids, 0)

        def send(node: str, message_type: str, body: dict[str, Any]) -> float:
            seq = seqs[node]
            seqs[node] = seq + 1
            topic = wire.topic_field(f"cluster/{node}/{message_type}")
            at = time.time()
            envelope = wire.envelope_bytes(message_type, node, at, seq, body)
            sock.sendall(wire.publish_packet(topic, next(packet_ids) % 65535 + 1, envelope))
            return at

        for node in ids:  # births: online, with a long interval so nobody turns stale
            send(node, "status", {"state": "online"})
            send(node, "machine_details", wire.details_payload(node, 3600.0))
        sample = dict(wire.METRICS_PAYLOAD)
        for node in ids:
            send(node, "metrics", {**sample, "cpu_percent": COOL_CPU})
        running = master

        def all_heard() -> bool:
            views = running.get("/api/nodes")["nodes"]
            return sum(1 for v in views if v["metrics"] is not None) >= nodes

        wait_until(all_heard, 30, message="the master to hold every node's first sample")
        published: dict[str, list[float]] = {node: [] for node in ids}
        step = 1.0 / (2 * rate)  # a cross and an uncross per firing
        started = time.monotonic()
        sent = 0
        for _round in range(FIRINGS_PER_NODE):
            for node in ids:
                for cpu in (HOT_CPU, COOL_CPU):
                    delay = started + sent * step - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # pacing the offered events, not awaiting anything
                    at = send(node, "metrics", {**sample, "cpu_percent": cpu})
                    if cpu == HOT_CPU:
                        published[node].append(at)
                    sent += 1
        offered_s = time.monotonic() - started
        expected = nodes * FIRINGS_PER_NODE * 2  # a firing and a resolved notification each
        complete = receiver.wait_for(expected, 60.0)
        # Anything sent twice would come right behind: give it a moment to show up.
        receiver.wait_for(expected + 1, 2.0)
    finally:
        if sock is not None:
            sock.close()
        if watcher is not None:
            watcher.close()
        if master is not None:
            master.stop()
        receiver.close()
        broker.stop()
    return _delivery_figures(
        published, receiver.posts, watcher.seen if watcher else [], complete, offered_s, rate
    )


def _delivery_figures(
    published: Mapping[str, list[float]],
    posts: Sequence[Post],
    seen: Sequence[tuple[float, str, str, str]],
    complete: bool,
    offered_s: float,
    rate: float,
) -> tuple[dict[str, Any], list[Row]]:
    """Match the k-th firing POST of a node to its k-th crossing; count what is missing."""
    firing: dict[str, list[float]] = {}
    resolved = 0
    other: list[str] = []
    for post in posts:
        parts = post.title.split()
        if len(parts) == 4 and parts[2] == DELIVERY_RULE and parts[3] == "firing":
            firing.setdefault(parts[1], []).append(post.at)
        elif len(parts) == 4 and parts[2] == DELIVERY_RULE and parts[3] == "resolved":
            resolved += 1
        else:
            other.append(post.title)
    committed: dict[str, list[float]] = {}
    for at, node, rule, kind in seen:
        if rule == DELIVERY_RULE and kind == "firing":
            committed.setdefault(node, []).append(at)
    latencies: list[float] = []
    commit_latencies: list[float] = []
    duplicates = missing = 0
    for node, times in published.items():
        arrived = firing.get(node, [])
        latencies += [post - pub for pub, post in zip(times, arrived, strict=False)]
        commit_latencies += [
            at - pub for pub, at in zip(times, committed.get(node, []), strict=False)
        ]
        duplicates += max(0, len(arrived) - len(times))
        missing += max(0, len(times) - len(arrived))
    expected = sum(len(times) for times in published.values())
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    c50, c99 = percentile(commit_latencies, 0.5), percentile(commit_latencies, 0.99)
    figures: dict[str, Any] = {
        "nodes": len(published),
        "firings_expected": expected,
        "firings_delivered": len(latencies),
        "duplicates": duplicates,
        "missing": missing,
        "resolved_delivered": resolved,
        "other_posts": other[:20],
        "other_post_count": len(other),
        "complete": complete,
        "offered_firings_per_s": rate,
        "offered_s": offered_s,
        "p50_s": p50,
        "p99_s": p99,
        "max_s": max(latencies) if latencies else None,
        "commit_p50_s": c50,
        "commit_p99_s": c99,
    }
    exact = duplicates == 0 and missing == 0 and not other
    section = (
        f"alerts: publish -> webhook POST, {len(published)} nodes x {FIRINGS_PER_NODE} firings, "
        f"{rate:g} firings/s"
    )
    rows = [
        Row(
            section,
            "firing notification p50 / p99 / max",
            " / ".join(_ms(v) for v in (p50, p99, figures["max_s"])),
        ),
        Row(
            section,
            "  publish -> master's alert envelope (committed) p50 / p99",
            f"{_ms(c50)} / {_ms(c99)}",
        ),
        Row(
            section,
            "firings delivered / expected (exactly once)",
            f"{len(latencies)} / {expected}",
            f"resolved {resolved}, other {len(other)}",
            "every one, once",
            f"dup {duplicates}, missing {missing}, {'met' if exact else 'MISSED'}",
        ),
    ]
    progress(f"alerts delivery: p50 {_ms(p50)}, p99 {_ms(p99)}, {len(latencies)}/{expected}")
    return figures, rows


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
