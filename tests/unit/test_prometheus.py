"""The /metrics exposition, parsed with prometheus_client's own parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cluster_protocol import METRICS as PROTOCOL_METRICS
from cluster_protocol import RejectCause
from cluster_protocol.payloads import MetricsPayload
from master_service.app import build
from master_service.ingest.counters import IngestCounters
from master_service.ingest.observers import Notice, Observer, notify
from master_service.settings import MasterSettings
from master_service.state import ClusterState, NodeStatus
from master_service.web.prometheus import IngestErrors, MasterMetrics
from tests.support.broker import free_port

NOW = 1_764_000_000.0

METRICS: dict[str, Any] = {
    "cpu_percent": 12.5,
    "memory_percent": 40.0,
    "swap_percent": None,
    "temperature_celsius": 51.2,
    "load_1": 0.5,
    "load_5": 0.25,
    "load_15": 0.125,
    "net_rx_bytes_per_s": 1000.0,
    "net_tx_bytes_per_s": 2000,
    "uptime_s": 3600,
    "disks": [
        {"mount": "/", "percent": 50.0},
        {"mount": "/mnt/usb", "percent": 12.0},
        {"mount": "/broken"},
    ],
}


def make_state() -> ClusterState:
    state = ClusterState(lambda: NOW, stale_factor=3.0)
    with state.lock:
        online = state.node("pi-01")
        # Deliberately off-schema in places (a disk without percent): the exporter skips them.
        online.metrics = cast(MetricsPayload, METRICS)
        online.status, online.last_heard = NodeStatus.ONLINE, NOW - 1
        online.received, online.seq_gaps, online.duplicates = 120, 3, 2
        gone = state.node("pi-02")
        gone.status, gone.last_heard = NodeStatus.OFFLINE, NOW - 300
        quiet = state.node("pi-03")  # says online but silent for ages: stale
        quiet.status, quiet.last_heard = NodeStatus.ONLINE, NOW - 600
    return state


def scrape(metrics: MasterMetrics) -> dict[str, list[Sample]]:
    text = metrics.exposition().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {sorted(samples)}"
    return found[0]


@pytest.fixture
def metrics() -> MasterMetrics:
    counters = IngestCounters()
    counters.received, counters.accepted, counters.handler_errors = 130, 120, 1
    counters.duplicates = 2
    counters.reject(RejectCause.NOT_JSON, "cluster/pi-09/metrics", "not JSON")
    counters.reject(RejectCause.NOT_JSON, "cluster/pi-09/metrics", "not JSON")
    gauges = {"mqtt_connected": 1.0, "ingest_queue_depth": 4.0}
    return MasterMetrics(make_state(), counters, lambda: gauges, clock=lambda: NOW)


def test_every_node_is_there_with_up_and_its_state(metrics: MasterMetrics) -> None:
    samples = scrape(metrics)

    assert value(samples, "picluster_node_up", node="pi-01") == 1
    assert value(samples, "picluster_node_up", node="pi-02") == 0
    assert value(samples, "picluster_node_up", node="pi-03") == 0
    assert value(samples, "picluster_node_state", node="pi-03", state="stale") == 1
    assert value(samples, "picluster_node_state", node="pi-03", state="online") == 0
    assert value(samples, "picluster_node_last_seen_timestamp_seconds", node="pi-02") == NOW - 300


def test_node_gauges_use_base_units_and_ratios(metrics: MasterMetrics) -> None:
    samples = scrape(metrics)

    assert value(samples, "picluster_node_cpu_usage_ratio", node="pi-01") == 0.125
    assert value(samples, "picluster_node_memory_usage_ratio", node="pi-01") == 0.4
    assert value(samples, "picluster_node_temperature_celsius", node="pi-01") == 51.2
    assert value(samples, "picluster_node_load15", node="pi-01") == 0.125
    assert value(samples, "picluster_node_network_transmit_bytes_per_second", node="pi-01") == 2000
    assert value(samples, "picluster_node_uptime_seconds", node="pi-01") == 3600
    ratio = "picluster_node_filesystem_usage_ratio"
    assert value(samples, ratio, node="pi-01", mount="/mnt/usb") == 0.12
    assert {s.labels["mount"] for s in samples[ratio]} == {"/", "/mnt/usb"}
    # A value the node does not have (no swap, no metrics yet) is absent, never a fake 0.
    assert "picluster_node_swap_usage_ratio" not in samples
    assert {s.labels["node"] for s in samples["picluster_node_cpu_usage_ratio"]} == {"pi-01"}


def test_master_health_counters_and_rejects_by_cause(metrics: MasterMetrics) -> None:
    samples = scrape(metrics)

    assert value(samples, "picluster_master_messages_received_total") == 130
    assert value(samples, "picluster_master_handler_errors_total") == 1
    assert value(samples, "picluster_master_duplicates_total") == 2
    rejected = "picluster_master_messages_rejected_total"
    assert value(samples, rejected, cause="not_json") == 2
    assert value(samples, rejected, cause="oversize") == 0  # every cause exists from the start
    assert {s.labels["cause"] for s in samples[rejected]} == {c.value for c in RejectCause}
    assert value(samples, "picluster_node_seq_gaps", node="pi-01") == 3
    assert value(samples, "picluster_node_messages_received_total", node="pi-01") == 120
    assert value(samples, "picluster_master_mqtt_connected") == 1
    assert value(samples, "picluster_master_ingest_queue_depth") == 4


def test_ingest_latency_histogram_counts_committed_samples(metrics: MasterMetrics) -> None:
    metrics.observe_committed([NOW - 0.03, NOW - 20, NOW + 5])  # last: a node clock ahead

    samples = scrape(metrics)

    name = "picluster_master_ingest_latency_seconds"
    assert value(samples, f"{name}_count") == 3
    assert value(samples, f"{name}_bucket", le="0.05") == 2
    assert value(samples, f"{name}_bucket", le="10.0") == 2
    assert value(samples, f"{name}_bucket", le="30.0") == 3
    assert value(samples, f"{name}_sum") == pytest.approx(20.03)


def test_names_follow_the_prometheus_conventions(metrics: MasterMetrics) -> None:
    metrics.observe_committed([NOW])
    text = metrics.exposition().decode()

    families = list(text_string_to_metric_families(text))

    assert families, "nothing exposed"
    for family in families:
        assert re.fullmatch(r"picluster_(node|master)_[a-z0-9_]+", family.name), family.name
        assert family.documentation, f"{family.name} has no HELP"
        assert "percent" not in family.name, f"{family.name}: Prometheus wants _ratio (0-1)"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_percentages_are_exported_as_exact_ratios() -> None:
    state = ClusterState(lambda: NOW, stale_factor=3.0)
    with state.lock:
        node = state.node("pi-01")
        node.status, node.last_heard = NodeStatus.ONLINE, NOW
        node.metrics = {"cpu_percent": 57, "memory_percent": 29.0}

    text = MasterMetrics(state, IngestCounters(), clock=lambda: NOW).exposition().decode()

    # 57 * 0.01 would print as 0.5700000000000001 for every scraper and graph to show.
    assert 'picluster_node_cpu_usage_ratio{node="pi-01"} 0.57\n' in text
    assert 'picluster_node_memory_usage_ratio{node="pi-01"} 0.29\n' in text


def test_every_metric_the_table_exports_is_scraped() -> None:
    state = ClusterState(lambda: NOW, stale_factor=3.0)
    exported = [m for m in PROTOCOL_METRICS if m.prometheus is not None]
    with state.lock:
        node = state.node("pi-01")
        node.status, node.last_heard = NodeStatus.ONLINE, NOW
        node.metrics = cast(MetricsPayload, {m.key: 2 for m in exported})

    samples = scrape(MasterMetrics(state, IngestCounters(), clock=lambda: NOW))

    for m in exported:
        assert m.prometheus is not None
        name = m.prometheus.name + ("_total" if m.prometheus.type == "counter" else "")
        assert value(samples, name, node="pi-01") == pytest.approx(2 * m.prometheus.scale)


def test_ingest_errors_and_health_are_exposed() -> None:
    errors = IngestErrors(
        observers={"HomeAssistantObserver": 3, "CommandService": 0},
        loop=1,
        dispatch=2,
        store=4,
        commit_listeners=5,
        mqtt_callbacks=6,
    )
    gauges = {"mqtt_connected": 0.0, "ingest_queue_depth": 0.0, "healthy": 0.0}
    metrics = MasterMetrics(
        make_state(), IngestCounters(), lambda: gauges, lambda: NOW, ingest_errors=lambda: errors
    )

    samples = scrape(metrics)

    observer = "picluster_master_observer_errors_total"
    assert value(samples, observer, observer="HomeAssistantObserver") == 3
    assert value(samples, observer, observer="CommandService") == 0
    assert value(samples, "picluster_master_ingest_loop_errors_total") == 1
    assert value(samples, "picluster_master_dispatch_errors_total") == 2
    assert value(samples, "picluster_master_store_errors_total") == 4
    assert value(samples, "picluster_master_commit_listener_errors_total") == 5
    assert value(samples, "picluster_master_mqtt_callback_errors_total") == 6
    assert value(samples, "picluster_master_healthy") == 0
    types = {f.name: f.type for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert types["picluster_master_store_errors"] == "counter"
    assert types["picluster_master_healthy"] == "gauge"


def test_without_an_error_source_every_error_counter_is_zero(metrics: MasterMetrics) -> None:
    samples = scrape(metrics)

    # Present at 0 from the first scrape, so increase() sees the first failure.
    assert value(samples, "picluster_master_store_errors_total") == 0
    assert value(samples, "picluster_master_ingest_loop_errors_total") == 0
    assert "picluster_master_observer_errors_total" not in samples


class Failing(Observer):
    def node_status(self, node: str, state: str) -> None:
        raise RuntimeError("observer bug")


def test_ingest_errors_read_a_masters_parts(tmp_path: Path) -> None:
    settings = MasterSettings(
        broker=f"mqtt://127.0.0.1:{free_port()}",  # never started: nothing connects
        db=str(tmp_path / "master.db"),
        ha_discovery=False,
    )
    service = build(settings)
    try:
        service.observers.append(Failing())
        notify(
            service.observers,
            [Notice("node_status", "pi-01", ("online",))],
            service.ctx.observer_errors,
        )
        notify(
            service.observers,
            [Notice("node_status", "pi-01", ("offline",))],
            service.ctx.observer_errors,
        )

        errors = IngestErrors.read(
            service.ingestor, service.listener, service.ctx.observer_errors, service.observers
        )
    finally:
        service.store.close()

    # The command service and alerts never failed but are listed; the broken observer counts
    # both calls.
    assert errors.observers == {"CommandService": 0, "AlertObserver": 0, "Failing": 2}
    assert (errors.loop, errors.dispatch, errors.store) == (0, 0, 0)
    assert (errors.commit_listeners, errors.mqtt_callbacks) == (0, 0)
