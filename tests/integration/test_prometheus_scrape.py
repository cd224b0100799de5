"""/metrics of a running master, scraped and parsed as Prometheus would."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import NODE_IDS, Cluster


def scrape(url: str) -> tuple[str, dict[str, list[tuple[dict[str, str], float]]]]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        content_type = response.headers["content-type"]
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return content_type, samples


def test_metrics_parse_and_carry_every_node(running_cluster: Cluster) -> None:
    content_type, samples = scrape(running_cluster.url)

    assert content_type.startswith("text/plain; version=0.0.4")
    up = {labels["node"]: value for labels, value in samples["picluster_node_up"]}
    assert up == dict.fromkeys(NODE_IDS, 1.0)
    for name in (
        "picluster_node_cpu_usage_ratio",
        "picluster_node_memory_usage_ratio",
        "picluster_node_load1",
        "picluster_node_network_receive_bytes_per_second",
        "picluster_node_last_seen_timestamp_seconds",
    ):
        assert {labels["node"] for labels, _ in samples[name]} == set(NODE_IDS), name
    ratios = samples["picluster_node_memory_usage_ratio"]
    assert all(0 < value <= 1 for _, value in ratios), ratios
    mounts = {
        (labels["node"], labels["mount"])
        for labels, _ in samples["picluster_node_filesystem_usage_ratio"]
    }
    assert {(node, "/") for node in NODE_IDS} <= mounts


def test_master_health_shows_traffic_and_ingest_latency(running_cluster: Cluster) -> None:
    _, samples = scrape(running_cluster.url)

    [(_, received)] = samples["picluster_master_messages_received_total"]
    assert received > 0
    [(_, connected)] = samples["picluster_master_mqtt_connected"]
    assert connected == 1
    [(_, committed)] = samples["picluster_master_ingest_latency_seconds_count"]
    assert committed > 0, "no committed sample was timed"
    [(_, total_s)] = samples["picluster_master_ingest_latency_seconds_sum"]
    assert total_s / committed < 5, "samples of live nodes take seconds to reach the store"


def test_master_says_it_is_healthy_and_counts_no_ingest_errors(running_cluster: Cluster) -> None:
    _, samples = scrape(running_cluster.url)

    [(_, healthy)] = samples["picluster_master_healthy"]
    assert healthy == 1
    observers = {
        labels["observer"]: value
        for labels, value in samples["picluster_master_observer_errors_total"]
    }
    assert "CommandService" in observers, observers
    assert set(observers.values()) == {0.0}
    for name in (
        "picluster_master_ingest_loop_errors_total",
        "picluster_master_dispatch_errors_total",
        "picluster_master_store_errors_total",
    ):
        [(_, value)] = samples[name]
        assert value == 0, name
