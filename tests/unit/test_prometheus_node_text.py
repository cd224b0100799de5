"""The nodes' /metrics text, written directly: byte for byte what prometheus_client writes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from cluster_protocol.payloads import MachineDetails, MetricsPayload
from master_service.ingest.counters import IngestCounters
from master_service.state import ClusterState
from master_service.web.prometheus import MasterMetrics, node_exposition, node_families

NOW = 1_800_000_000.0
DETAILS: MachineDetails = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "ram": 4 * 1024**3,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "interval_s": 10,
}
METRICS: MetricsPayload = {  # type: ignore[typeddict-unknown-key]
    "cpu_percent": 57.0,
    "load_1": 0.42,
    "memory_percent": 22.5,
    "swap_percent": 0.0,
    "temperature_celsius": 47.2,
    "net_rx_bytes_per_s": 1532.25,
    "net_tx_bytes_per_s": 12_345_678.5,
    "disk_read_bytes_per_s": 2048.0,
    "uptime_s": 86_400.5,
    "cpu_freq_hz": 1_800_000_000,
    "disks": [
        {"mount": "/", "total_bytes": 1, "used_bytes": 1, "percent": 17.2},
        {"mount": '/media/odd "name"\\x', "total_bytes": 1, "used_bytes": 1, "percent": 99.99},
        {"mount": "/nopercent"},  # type: ignore[typeddict-item]
    ],
    "throttled": {"raw": "0x0"},
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cluster(clock: Clock) -> ClusterState:
    """Nodes in every state, with and without tags, metrics and counters."""
    state = ClusterState(clock)
    with state.lock:
        for index, status in enumerate(("online", "offline", "online", "unknown")):
            node = state.node(f"pi-{index:02d}")
            node.status = status
            node.last_heard = NOW - (0 if index != 2 else 3600)  # pi-02 has gone stale
            node.details = {**DETAILS, "tags": ["rack1"] if index % 2 else []}
            node.metrics = {**METRICS, "cpu_percent": 10.0 * index}
            node.received, node.duplicates, node.seq_gaps = 100 + index, index, 2 * index
        state.node("pi-09")  # heard of, nothing else
    state.set_master_tags("pi-00", ["poe"])
    return state


def old_text(state: ClusterState) -> bytes:
    """The families as prometheus_client wrote them from the decoded views."""

    class Nodes(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from node_families(state.views())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Nodes())
    return generate_latest(registry)


def test_the_direct_text_is_what_prometheus_client_writes():
    state = cluster(Clock(NOW))
    _, _, facts = state.facts()

    assert node_exposition(facts) == old_text(state)


def test_no_nodes_still_gives_every_family():
    state = ClusterState(Clock(NOW))

    assert node_exposition(state.facts()[2]) == old_text(state)


def test_the_text_is_kept_until_a_commit_and_follows_a_node_turning_stale():
    clock = Clock(NOW)
    state = cluster(clock)
    metrics = MasterMetrics(state, IngestCounters(), clock=clock)
    first = metrics.node_text()
    assert b'picluster_node_cpu_usage_ratio{node="pi-01"} 0.1\n' in first

    with state.lock:
        state.node("pi-01").metrics = {**METRICS, "cpu_percent": 88.0}
    assert metrics.node_text() is first  # not committed yet

    state.committed()
    assert b'picluster_node_cpu_usage_ratio{node="pi-01"} 0.88\n' in metrics.node_text()
    assert b'picluster_node_up{node="pi-00"} 1.0\n' in metrics.node_text()

    clock.now += 31  # three intervals and a second: pi-00 is stale, with no commit
    assert b'picluster_node_up{node="pi-00"} 0.0\n' in metrics.node_text()
    assert b'picluster_node_state{node="pi-00",state="stale"} 1.0\n' in metrics.node_text()
