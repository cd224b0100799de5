"""Drain benchmark: N messages queued for a stopped consumer's session, then the time to take them.

    .venv/bin/python -m bench.drain                    # 50,000 messages, each consumer twice
    .venv/bin/python -m bench.drain --messages 20000 --rounds 1

What a master restart after an outage costs. For each consumer, on a fresh `BenchBroker`
(the production queue limits): its persistent session is created (`mosquitto_sub -c -x -E`,
clean start off, an expiry, `cluster/#` at QoS 1), `bench.loadgen` queues N metrics
envelopes of a Pi 4 from 100 nodes while it is away, then the consumer is started and timed
from its process start to its last message (for the master: the commit that holds it):

1. the master with `ingest_client = "mqtt5"` (the real `MasterService`, history committed,
   PUBACK after commit, no HTTP server, Home Assistant discovery off);
2. the master with `ingest_client = "paho"`, the same otherwise;
3. a bare paho subscriber (MQTT 5, clean start off) that only counts;
4. `mosquitto_sub -V mqttv5 -q 1 -c -C N`.

Consumers alternate within each round; the figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.broker import BenchBroker
from bench.loadgen import Plan, run
from bench.procstat import cpu_seconds

CLIENT_ID: Final = "bench-drain"
SESSION_EXPIRY_S: Final = 3600
TIMEOUT_S: Final = 300.0
CONSUMERS: Final = ("master-mqtt5", "master-paho", "paho-counter", "mosquitto_sub")


def emit(event: str, **fields: object) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def run_master(port: int, target: int, ingest_client: str, db: str) -> int:
    """Child: a master on the queued session; print when `target` messages are committed."""
    import logging

    from master_service.app import build
    from master_service.settings import MasterSettings

    logging.basicConfig(level=logging.ERROR)
    settings = MasterSettings(
        broker=f"mqtt://127.0.0.1:{port}",
        db=db,
        client_id=CLIENT_ID,
        ha_discovery=False,
        ingest_client=ingest_client,
        log_level="ERROR",
    )
    service = build(settings)
    done = threading.Event()
    marks: dict[str, float] = {}

    def committed(_count: int) -> None:
        marks.setdefault("first", time.time())
        if service.ingestor.committed >= target and not done.is_set():
            marks["done"] = time.time()
            done.set()

    service.ingestor.commit_listeners.append(committed)
    service.start()
    finished = done.wait(TIMEOUT_S)
    emit(
        "done",
        t_first=marks.get("first"),
        t_done=marks.get("done"),
        count=service.ingestor.committed,
        cpu_s=cpu_seconds(),
        ok=finished,
        rejected=service.counters.snapshot()["rejected"],
    )
    logging.getLogger().setLevel(logging.CRITICAL)
    service.stop()
    return 0 if finished else 1


def run_paho_counter(port: int, target: int) -> int:
    """Child: a paho subscriber on the queued session that only counts."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    done = threading.Event()
    count = 0
    marks: dict[str, float] = {}

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == 1:
            marks["first"] = time.time()
        if count >= target and not done.is_set():
            marks["done"] = time.time()
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    finished = done.wait(TIMEOUT_S)
    emit(
        "done",
        t_first=marks.get("first"),
        t_done=marks.get("done"),
        count=count,
        cpu_s=cpu_seconds(),
        ok=finished,
    )
    client.disconnect()
    client.loop_stop()
    return 0 if finished else 1


def create_session(port: int) -> None:
    """The consumer's persistent session: clean start off, an expiry, `cluster/#` at QoS 1."""
    subprocess.run(
        [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
            "-c", "-x", str(SESSION_EXPIRY_S), "-i", CLIENT_ID, "-t", "cluster/#", "-E",
        ],
        check=True,
        timeout=30,
    )  # fmt: skip


def consumer_command(kind: str, port: int, target: int, db: Path) -> list[str]:
    """The command line of one consumer."""
    if kind == "mosquitto_sub":
        return [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
            "-c", "-x", str(SESSION_EXPIRY_S), "-i", CLIENT_ID, "-t", "cluster/#",
            "-C", str(target),
        ]  # fmt: skip
    module = [sys.executable, "-m", "bench.drain"]
    if kind == "paho-counter":
        return [*module, "--child", "paho-counter", "--port", str(port), "--target", str(target)]
    client = kind.removeprefix("master-")
    return [
        *module, "--child", "master", "--ingest-client", client, "--port", str(port),
        "--target", str(target), "--db", str(db),
    ]  # fmt: skip


def drain_once(kind: str, messages: int, workdir: Path) -> dict[str, Any]:
    """Queue `messages` for a stopped consumer, start it, time it until it has them all."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = BenchBroker(workdir / "broker").start()
    try:
        create_session(broker.port)
        plan = Plan(
            nodes=100, metrics=messages, rate=0.0, births=False, birth_rate=0.0, interval_s=10.0
        )
        sent = run(plan, broker.host, broker.port, "bench-drain-loadgen")
        if sent["acked"] != messages:
            raise RuntimeError(f"the broker acknowledged {sent['acked']} of {messages}")
        started = time.time()
        process = subprocess.run(
            consumer_command(kind, broker.port, messages, workdir / "master.db"),
            capture_output=True,
            timeout=TIMEOUT_S + 60,
            check=False,
        )
        ended = time.time()
        if process.returncode != 0:
            raise RuntimeError(f"{kind} failed: {process.stderr.decode()[-2000:]}")
        if kind == "mosquitto_sub":
            lines = process.stdout.count(b"\n")
            return {"seconds": ended - started, "count": lines, "cpu_s": None}
        result = json.loads(process.stdout.decode().strip().splitlines()[-1])
        flowing = result["t_done"] - result["t_first"]  # first message (commit) -> last
        return {"seconds": result["t_done"] - started, "flowing_s": flowing, **result}
    finally:
        broker.stop()


def measure(messages: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median drain time and rate of every consumer over `rounds`, consumers alternating."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CONSUMERS}
    with tempfile.TemporaryDirectory(prefix="drain-") as tmp:
        for index in range(rounds):
            for kind in CONSUMERS:
                runs[kind].append(drain_once(kind, messages, Path(tmp) / f"{kind}-{index}"))
    figures = {}
    for kind, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        cpus = [r["cpu_s"] for r in results if r.get("cpu_s") is not None]
        figures[kind] = {
            "seconds": seconds,
            "msg_per_s": messages / seconds,
            "cpu_us_per_msg": statistics.median(cpus) / messages * 1e6 if cpus else float("nan"),
            "count": min(r["count"] for r in results),
        }
        flowing = [r["flowing_s"] for r in results if "flowing_s" in r]
        figures[kind]["flowing_msg_per_s"] = (
            messages / statistics.median(flowing) if flowing else float("nan")
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Orchestrate (default) or run one consumer (`--child`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("master", "paho-counter"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--target", type=int)
    parser.add_argument("--ingest-client", default="mqtt5")
    parser.add_argument("--db")
    args = parser.parse_args(argv)
    if args.child == "master":
        return run_master(args.port, args.target, args.ingest_client, args.db)
    if args.child == "paho-counter":
        return run_paho_counter(args.port, args.target)
    if shutil.which("mosquitto_sub") is None:
        parser.error("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    figures = measure(args.messages, args.rounds)
    sub = figures["mosquitto_sub"]["msg_per_s"]
    paho = figures["paho-counter"]["msg_per_s"]
    lines = [
        f"== drain: {args.messages:,} QoS 1 messages queued for a stopped consumer, "
        f"median of {args.rounds}",
        f"{'consumer':<16}{'seconds':>9}{'msg/s':>10}{'x paho':>8}{'x sub':>7}"
        f"{'first->last msg/s':>19}{'CPU us/msg':>12}",
    ]
    for kind, figure in figures.items():
        rate = figure["msg_per_s"]
        lines.append(
            f"{kind:<16}{figure['seconds']:>9.2f}{rate:>10,.0f}{rate / paho:>8.2f}"
            f"{rate / sub:>7.2f}{figure['flowing_msg_per_s']:>19,.0f}"
            f"{figure['cpu_us_per_msg']:>12.1f}"
        )
    lines.append("seconds: from the consumer's process start (imports, database, connect) on")
    sys.stdout.write("\n".join(lines) + "\n" + json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
