"""`cluster-master place` over a real master: three nodes of different sizes, told over MQTT.

One machine cannot be three sizes, so the nodes are paho clients publishing real v1 envelopes
(status, machine_details, metrics) with the sizes of a Pi Zero, a Pi 4 and a Pi 5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, MessageType, encode_envelope, topic_for
from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, start_master
from tests.support.waiting import wait_until

GIB = 1024**3
# node: (arch, cores, ram, available, cpu %, load_1, state)
NODES: dict[str, tuple[str, int, int, int, float, float, str]] = {
    "zero": ("armv6l", 1, GIB // 2, GIB // 4, 30.0, 0.4, "online"),
    "pi4": ("aarch64", 4, 4 * GIB, 3 * GIB, 20.0, 0.8, "online"),
    "pi5": ("aarch64", 4, 8 * GIB, 7 * GIB, 10.0, 0.3, "online"),
    "busy5": ("aarch64", 4, 8 * GIB, 6 * GIB, 90.0, 3.6, "online"),
    "gone": ("aarch64", 8, 16 * GIB, 15 * GIB, 1.0, 0.0, "offline"),
}


def details(node: str) -> dict[str, Any]:
    arch, cores, ram, *_ = NODES[node]
    return {
        "hostname": node,
        "cpu_percent_used": 1.0,
        "ram": ram,
        "cpu": "Cortex",
        "cpu_cores": cores,
        "arch": arch,
        "interval_s": 3600,  # never stale during the test
    }


def metrics(node: str) -> dict[str, Any]:
    _, _, ram, available, cpu, load, _ = NODES[node]
    return {
        "cpu_percent": cpu,
        "load_1": load,
        "memory_total_bytes": ram,
        "memory_available_bytes": available,
        "memory_percent": round(100 * (1 - available / ram), 1),
    }


@dataclass
class Cluster:
    master: RunningMaster
    prefix: str

    def place(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "master_service", "place", *flags, "--api", self.master.api],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
        )


@pytest.fixture(scope="module")
def cluster(broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("placement")
    prefix = f"place{uuid.uuid4().hex[:8]}"
    master = start_master(broker.url, workdir, "--prefix", prefix, "--client-id", f"m-{prefix}")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for node in NODES:
            for seq, (message_type, payload, retain) in enumerate(
                (
                    (MessageType.STATUS, {"state": NODES[node][6]}, True),
                    (MessageType.MACHINE_DETAILS, details(node), True),
                    (MessageType.METRICS, metrics(node), False),
                ),
                start=1,
            ):
                envelope = Envelope(message_type, node, time.time(), seq, payload)
                topic = topic_for(node, message_type, prefix)
                info = client.publish(topic, encode_envelope(envelope), qos=1, retain=retain)
                info.wait_for_publish(10)

        def all_known() -> bool:
            with urllib.request.urlopen(master.api + "/api/nodes", timeout=5) as response:
                views = {v["node"]: v for v in json.load(response)["nodes"]}
            return all(n in views and views[n]["metrics"] for n in NODES if n != "gone")

        wait_until(all_known, 15, 0.1, "the master knows every node's metrics")
        yield Cluster(master, prefix)
    finally:
        for node in NODES:  # clear the retained messages of this prefix
            for message_type in (MessageType.STATUS, MessageType.MACHINE_DETAILS):
                client.publish(topic_for(node, message_type, prefix), b"", 1, True)
        client.disconnect()
        client.loop_stop()
        master.stop()


def test_place_picks_the_roomiest_nodes_and_explains_the_others(cluster):
    done = cluster.place("--min-ram", "2GiB", "--min-cores", "4", "--count", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "chosen (2 of 2 wanted):"
    assert lines[1].startswith("  pi5: ram: 7.0 GiB free (needs 2.0 GiB); cores: 4 (needs 4);")
    assert lines[2].startswith("  busy5: ")  # more spare memory outweighs its busy cores
    assert lines[3] == "also fit:"
    assert lines[4].startswith("  pi4: ")
    assert "  gone: offline" in lines
    assert "  zero: ram: 256 MiB free (needs 2.0 GiB); cores: 1 (needs 4)" in lines


def test_a_cpu_limit_and_an_arch_alias_narrow_the_choice(cluster):
    done = cluster.place("--min-ram", "2G", "--max-cpu-percent", "50", "--arch", "arm64", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [c["node"] for c in answer["chosen"]] == ["pi5"]
    assert [c["node"] for c in answer["also_fit"]] == ["pi4"]
    rejected = {r["node"]: r["misses"] for r in answer["rejected"]}
    assert rejected["busy5"] == ["cpu: 90% busy (max 50%)"]
    assert rejected["zero"][-1] == "arch: armv6l (needs aarch64)"
    assert answer["requirements"]["min_ram_bytes"] == 2_000_000_000


def test_asking_for_more_nodes_than_fit_exits_1(cluster):
    done = cluster.place("--min-ram", "4GiB", "--count", "3")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "chosen (2 of 3 wanted):"


def test_a_bad_size_is_refused_with_an_example(cluster):
    done = cluster.place("--min-ram", "lots")
    assert done.returncode == 4
    assert "512MiB" in done.stderr


def post_placement(cluster: Cluster, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        cluster.master.api + "/api/placement",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"max_cpu_percent": False}, "body field max_cpu_percent: Input should be a valid number"),
        ({"max_cpu_percent": "50"}, "body field max_cpu_percent: Input should be a valid number"),
        ({"min_cores": True}, "body field min_cores: Input should be a valid integer"),
        ({"count": 1.5}, "body field count: Input should be a valid integer"),
        ({"min_ram": "2 potatoes"}, "body field min_ram: Value error, '2 potatoes' is not a size"),
        ({"min_ram_gb": 2}, "body field min_ram_gb: Extra inputs are not permitted"),
        ({"arch": " "}, "body field arch: String should match pattern"),
    ],
)
def test_the_placement_api_takes_numbers_strictly_and_says_which_field_is_wrong(
    cluster, body, says
):
    status, answer = post_placement(cluster, body)
    assert status == 422
    assert says in answer["detail"]


def test_a_whole_float_is_a_count_and_zero_percent_is_a_real_limit(cluster):
    status, answer = post_placement(cluster, {"count": 2.0, "max_cpu_percent": 0})
    assert status == 200
    assert answer["requirements"]["count"] == 2
    assert answer["requirements"]["max_cpu_percent"] == 0
    assert answer["chosen"] == []  # every node is busier than 0 %
    assert {r["node"] for r in answer["rejected"]} == set(NODES)
