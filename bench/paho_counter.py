"""Baseline consumer: a bare paho-mqtt subscriber (MQTT v5, QoS 1) that only counts messages.

Prints {"event": "ready"} on the first message (the retained probe), then {"event": "done"}
with timings once `--target` messages arrived (or the timeout passed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.procstat import cpu_seconds, memory_kib


def emit(event: str, **fields: object) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Count messages on cluster/# until the target or the timeout."""
    parser = argparse.ArgumentParser(prog="python -m bench.paho_counter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    done = threading.Event()
    count = 0
    marks: dict[str, float] = {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe("cluster/#", qos=1)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == 1:
            marks["ready"] = time.time()
            marks["cpu_ready"] = cpu_seconds()
            emit("ready", t=marks["ready"])
        if count >= args.target:
            marks["done"] = time.time()
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-paho-counter", protocol=mqtt.MQTTv5
    )
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_start()
    done.wait(args.timeout)
    emit(
        "done",
        t_done=marks.get("done"),
        count=count,
        cpu_s=cpu_seconds() - marks.get("cpu_ready", 0.0),
        **memory_kib(),
    )
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
