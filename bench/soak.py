"""Soak: N simulated nodes, one envelope per interval each, against the shipped broker and a master.

Not run in CI. The broker runs mosquitto/mosquitto.conf (listener and paths rewritten, users and
the shipped ACL); the master is `python -m master_service run` in its own process, so its memory
is its own. Each simulated node is a lean publisher: its own MQTT connection and user, and the
node agent's real on-disk `Spool` and `Outbox` (seq, spooling while the broker is away, delete on
PUBACK); no collectors, status or details, so the counts are metrics envelopes only.
The broker is restarted once in the middle (SIGTERM by default; `--restart-signal KILL` crashes it).

    .venv/bin/python -m bench.soak --nodes 200 --duration 600
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, MessageType, encode_envelope, topic_for
from node_publisher.outbox import Outbox
from node_publisher.spool import Spool
from tests.support.broker import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = REPO_ROOT / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = REPO_ROOT / "mosquitto" / "acl"
NODE_PASSWORD = "soak-node"
MASTER_PASSWORD = "soak-master"
METRICS = {
    "cpu_percent": 12.5,
    "cpu_percent_per_core": [10.0, 15.0, 12.0, 13.0],
    "load_1": 0.5,
    "load_5": 0.4,
    "load_15": 0.3,
    "memory_total_bytes": 4_000_000_000,
    "memory_available_bytes": 3_000_000_000,
    "memory_percent": 25.0,
    "swap_percent": 0.0,
    "disks": [{"mount": "/", "total_bytes": 32e9, "used_bytes": 8e9, "percent": 25.0}],
    "disk_read_bytes_per_s": 1000.0,
    "disk_write_bytes_per_s": 2000.0,
    "net_rx_bytes_per_s": 500.0,
    "net_tx_bytes_per_s": 700.0,
    "temperature_celsius": 48.2,
    "uptime_s": 1000.0,
    "process_count": 120,
    "throttled": None,
    "spool_dropped": 0,
}


def log(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class Broker:
    """The shipped mosquitto.conf on a free port, with users for the master and every node."""

    def __init__(self, workdir: Path, node_ids: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        passwd = workdir / "passwd"
        lines = [f"picluster-master:{MASTER_PASSWORD}", *(f"{n}:{NODE_PASSWORD}" for n in node_ids)]
        passwd.write_text("\n".join(lines) + "\n")
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
        passwd.chmod(0o600)
        acl = workdir / "acl"
        acl.write_text(SHIPPED_ACL.read_text())
        replacements = {
            "listener 1883": f"listener {self.port} 127.0.0.1",
            "pid_file /run/mosquitto/mosquitto.pid": "",
            "password_file /etc/mosquitto/passwd": f"password_file {passwd}",
            "acl_file /etc/mosquitto/acl": f"acl_file {acl}",
            "persistence_location /var/lib/mosquitto/": f"persistence_location {workdir}/",
            "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {workdir}/broker.log",
        }
        conf = [replacements.get(line, line) for line in SHIPPED_CONF.read_text().splitlines()]
        if os.geteuid() == 0:
            conf.insert(0, "user root")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)], stderr=subprocess.DEVNULL
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(30)
            self.process = None


@dataclass
class SimNode:
    """One simulated node: its connection, real spool and outbox."""

    node_id: str
    spool: Spool
    outbox: Outbox
    client: mqtt.Client

    def append(self) -> None:
        ts = time.time()

        def build(seq: int) -> bytes:
            return encode_envelope(Envelope(MessageType.METRICS, self.node_id, ts, seq, METRICS))

        self.spool.append(topic_for(self.node_id, MessageType.METRICS), build)
        self.outbox.wake()


def make_node(node_id: str, port: int, state_dir: Path) -> SimNode:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"picluster-node-{node_id}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(node_id, NODE_PASSWORD)
    spool = Spool(state_dir / f"spool-{node_id}.sqlite3", 8640)
    outbox = Outbox(spool, client)
    client.on_connect = lambda c, u, f, rc, p: (
        outbox.notify_connected() if not rc.is_failure else None
    )
    client.on_disconnect = lambda *args: outbox.notify_disconnected()
    client.on_publish = lambda c, u, mid, rc, p: outbox.notify_acked(mid, rc.is_failure, str(rc))
    client.reconnect_delay_set(1, 5)
    client.connect_async("127.0.0.1", port, keepalive=30)
    outbox.start()
    client.loop_start()
    return SimNode(node_id, spool, outbox, client)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_nodes(api: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(api + "/api/nodes", timeout=30) as response:
        nodes = json.load(response)["nodes"]
    return {n["node"]: n["counters"] for n in nodes}


NODES_PER_WORKER = 40  # paho's select() fails past fd 1023; each node holds ~6 descriptors


def run_worker(args: argparse.Namespace) -> None:
    """One worker process: its share of the nodes, one envelope each per interval."""
    node_ids = [f"soak-{i:04d}" for i in range(args.first, args.first + args.count)]
    nodes = [make_node(n, args.port, Path(args.state_dir)) for n in node_ids]
    started = time.monotonic()
    tick = 0
    while time.monotonic() < started + args.duration:
        for node in nodes:
            node.append()
        tick += 1
        time.sleep(max(0.0, started + tick * args.interval - time.monotonic()))
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline and any(len(n.spool) for n in nodes):
        time.sleep(0.5)
    for node in nodes:
        node.client.disconnect()
        node.client.loop_stop()
        node.outbox.stop()


def spool_figures(state_dir: Path, node_id: str) -> tuple[int, int]:
    """(last seq handed out, envelopes still spooled) read from a node's spool file."""
    with sqlite3.connect(state_dir / f"spool-{node_id}.sqlite3", timeout=30) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        (spooled,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return (int(row[0]) if row else 0), int(spooled)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Broker, master and worker processes; restart the broker mid-way; count."""
    workdir = Path(tempfile.mkdtemp(prefix="picluster-soak-"))
    state_dir = workdir / "nodes"
    node_ids = [f"soak-{i:04d}" for i in range(args.nodes)]
    broker = Broker(workdir, node_ids)
    broker.start()
    http_port = free_port()
    api = f"http://127.0.0.1:{http_port}"
    (workdir / "master.password").write_text(MASTER_PASSWORD + "\n")
    master_log = (workdir / "master.log").open("wb")
    master = subprocess.Popen(
        [
            sys.executable, "-m", "master_service", "run",
            "--broker", f"mqtt://picluster-master@127.0.0.1:{broker.port}",
            "--password-file", str(workdir / "master.password"),
            "--db", str(workdir / "master.db"), "--http", f"127.0.0.1:{http_port}",
            "--no-ha-discovery", "--log-level", "WARNING",
        ],
        cwd=REPO_ROOT, stdout=master_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port("127.0.0.1", http_port, timeout_s=30)
        rss_start = rss_mib(master.pid)
        common = ["--port", str(broker.port), "--state-dir", str(state_dir)]
        common += ["--duration", str(args.duration), "--interval", str(args.interval)]
        for first in range(0, args.nodes, NODES_PER_WORKER):
            share = [
                "--first",
                str(first),
                "--count",
                str(min(NODES_PER_WORKER, args.nodes - first)),
            ]
            command = [sys.executable, "-m", "bench.soak", "--worker", *share, *common]
            workers.append(subprocess.Popen(command, cwd=REPO_ROOT))
        log(f"{args.nodes} nodes in {len(workers)} workers; master RSS {rss_start:.1f} MiB")
        time.sleep(args.duration / 2)
        sig = signal.Signals[f"SIG{args.restart_signal}"]
        log(f"restarting the broker ({sig.name}, {args.outage} s down)")
        broker.stop(sig)
        time.sleep(args.outage)
        broker.start()
        for worker in workers:
            worker.wait()
        log("workers done (published, spools drained or drain timed out)")
        figures = {n: spool_figures(state_dir, n) for n in node_ids}
        sent = {n: seq for n, (seq, _) in figures.items()}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counters = api_nodes(api)
            if all((counters.get(n) or {}).get("last_seq") == seq for n, seq in sent.items()):
                break
            time.sleep(1)
        counters = api_nodes(api)
        rss_end = rss_mib(master.pid)
        lost = 0
        for node_id, seq in sent.items():
            c = counters.get(node_id) or {"last_seq": 0, "seq_gaps": 0}
            lost += int(c["seq_gaps"]) + max(0, seq - int(c["last_seq"] or 0))
        return {
            "nodes": args.nodes,
            "duration_s": args.duration,
            "interval_s": args.interval,
            "restart_signal": args.restart_signal,
            "outage_s": args.outage,
            "sent": sum(sent.values()),
            "received": sum(int(c["received"]) for c in counters.values()),
            "lost": lost,
            "duplicates_dropped": sum(int(c["duplicates"]) for c in counters.values()),
            "still_spooled": sum(spooled for _, spooled in figures.values()),
            "master_rss_mib_start": round(rss_start, 1),
            "master_rss_mib_end": round(rss_end, 1),
            "workdir": str(workdir),
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)
        master.send_signal(signal.SIGTERM)
        master.wait(30)
        master_log.close()
        broker.stop()


def main() -> None:
    """Run the soak (or, with --worker, one share of its nodes) and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of publishing")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between envelopes")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the broker is down")
    parser.add_argument("--restart-signal", choices=("TERM", "KILL"), default="TERM")
    worker = parser.add_argument_group("worker (internal)")
    worker.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--state-dir", default="", help=argparse.SUPPRESS)
    worker.add_argument("--drain", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    sys.stdout.write(json.dumps(run(args), indent=2) + "\n")


if __name__ == "__main__":
    main()
