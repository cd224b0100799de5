"""The whole system as a user runs it: real broker, `cluster-master run`, `cluster-node run`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import REQUIRED_MACHINE_DETAILS, Envelope, encode_envelope, topic_for
from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, start_master, start_node
from tests.support.waiting import wait_until


def online_with_metrics(master: RunningMaster, node_id: str) -> dict[str, Any] | None:
    view = master.node(node_id)
    if view and view["state"] == "online" and view["details"] and view["metrics"]:
        return view
    return None


def state_of(master: RunningMaster, node_id: str) -> str | None:
    view = master.node(node_id)
    return None if view is None else str(view["state"])


def counters_of(master: RunningMaster, node_id: str) -> dict[str, Any]:
    view = master.node(node_id)
    return {"received": -1} if view is None else dict(view["counters"])


def test_two_nodes_show_up_in_the_api_with_details_and_fresh_metrics(broker, tmp_path):
    master = start_master(broker.url, tmp_path)
    nodes = [start_node(broker.url, tmp_path, node_id) for node_id in ("e2e-a", "e2e-b")]
    try:
        started = time.monotonic()
        views = [
            wait_until(partial(online_with_metrics, master, n), 5, message=f"{n} online")
            for n in ("e2e-a", "e2e-b")
        ]
        assert time.monotonic() - started < 5
        for view in views:
            for key in REQUIRED_MACHINE_DETAILS:
                assert key in view["details"], key
            assert view["details"]["cpu_cores"] >= 1
            assert view["details"]["ram"] > 0
            assert time.time() - view["metrics_ts"] < 5
            assert 0 <= view["metrics"]["cpu_percent"] <= 100
        listed = {n["node"] for n in master.get("/api/nodes")["nodes"]}
        assert {"e2e-a", "e2e-b"} <= listed
        cluster = master.get("/api/cluster")
        assert cluster["online"] >= 2
        assert cluster["cores_total"] >= 2
    finally:
        for node in nodes:
            assert node.stop() == 0, node.log()
        master.stop()


def test_status_command_prints_the_table(broker, tmp_path):
    master = start_master(broker.url, tmp_path)
    node = start_node(broker.url, tmp_path, "e2e-status")
    try:
        wait_until(lambda: online_with_metrics(master, "e2e-status"), 10, message="node online")
        result = subprocess.run(
            [sys.executable, "-m", "master_service", "status", "--api", master.api],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        header, *rows = result.stdout.splitlines()
        assert header.split()[:3] == ["NODE", "STATE", "LAST"]
        row = next(r for r in rows if r.startswith("e2e-status"))
        assert row.split()[1] == "online"
    finally:
        node.stop()
        master.stop()


def test_killed_node_goes_offline_through_its_will_and_comes_back(broker, tmp_path):
    keepalive = 2
    master = start_master(broker.url, tmp_path)
    node = start_node(broker.url, tmp_path, "e2e-kill", "--keepalive", str(keepalive))
    try:
        wait_until(lambda: online_with_metrics(master, "e2e-kill"), 10, message="node online")
        node.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: state_of(master, "e2e-kill") == "offline",
            1.5 * keepalive + 1,
            message="offline through the will",
        )
        assert time.monotonic() - killed_at <= 1.5 * keepalive
        node = start_node(broker.url, tmp_path, "e2e-kill", "--keepalive", str(keepalive))
        wait_until(lambda: state_of(master, "e2e-kill") == "online", 10, message="online again")
    finally:
        node.stop()
        master.stop()


def publish_envelopes(broker: MosquittoBroker, node_id: str, first_seq: int, count: int) -> None:
    """A simulated node: `count` QoS 1 message envelopes, every PUBACK awaited."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = []
        for seq in range(first_seq, first_seq + count):
            envelope = Envelope("message", node_id, time.time(), seq, f"note {seq}")
            infos.append(
                client.publish(topic_for(node_id, "message"), encode_envelope(envelope), 1)
            )
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_master_restart_loses_nothing_published_while_it_was_down(broker, tmp_path):
    node_id = "e2e-restart"
    master = start_master(broker.url, tmp_path, "--client-id", "picluster-master-restart")
    publish_envelopes(broker, node_id, 0, 1)
    wait_until(lambda: master.node(node_id), 10, message="first envelope counted")
    assert master.stop() == 0, master.log()

    publish_envelopes(broker, node_id, 1, 1000)

    master = start_master(
        broker.url, tmp_path, "--client-id", "picluster-master-restart", db=master.database
    )
    try:
        counters = wait_until(
            lambda: (c := counters_of(master, node_id))["received"] >= 1001 and c,
            30,
            message="all 1,000 envelopes counted",
        )
        assert counters["received"] == 1001
        assert counters["seq_gaps"] == 0
        assert counters["last_seq"] == 1000
        assert counters["messages"] == 1001
    finally:
        master.stop()


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe", b'{"v":1,"type":"metrics"}'])
def test_bad_input_is_counted_and_valid_traffic_still_lands(broker, tmp_path, bad):
    master = start_master(broker.url, tmp_path)
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.publish("cluster/e2e-bad/metrics", bad, qos=1).wait_for_publish(5)
        good = Envelope("message", "e2e-bad", time.time(), 7, "still here")
        client.publish(topic_for("e2e-bad", "message"), encode_envelope(good), 1).wait_for_publish(
            5
        )
        client.disconnect()
        client.loop_stop()
        view = wait_until(lambda: master.node("e2e-bad"), 10, message="the valid envelope")
        assert view["counters"]["messages"] == 1
        rejected = master.get("/api/cluster")["master"]["rejected"]
        assert sum(rejected.values()) >= 1
        assert "dropped message on cluster/e2e-bad/metrics" in master.log()
        json.dumps(rejected)
    finally:
        master.stop()
