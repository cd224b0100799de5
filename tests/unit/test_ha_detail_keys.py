"""The publisher keeps only `DETAIL_KEYS` of a node's details: discovery must need no other."""

from __future__ import annotations

import json

import pytest

from cluster_protocol.payloads import MachineDetails
from master_service.home_assistant import discovery as hd
from master_service.home_assistant.publisher import DiscoveryPublisher

FULL: MachineDetails = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "ram": 4 * 1024**3,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "os": "Debian GNU/Linux 12 (bookworm)",
    "kernel": "6.6.51+rpt-rpi-v8",
    "arch": "aarch64",
    "model": "Raspberry Pi 4 Model B Rev 1.5",
    "boot_time": 1_764_000_000.0,
    "disk_total_bytes": 31_254_278_144,
    "ip_addresses": ["192.0.2.10"],
    "agent_version": "0.1.0",
    "interval_s": 7,
    "commands": ["refresh", "reboot", "shutdown"],
    "tasks": ["apt-upgrade"],
    "tags": ["rack1"],
}


def messages(details: MachineDetails, per_entity: bool) -> list[hd.DiscoveryMessage]:
    """The node's discovery messages as the publisher builds them."""
    shape = hd.NodeShape(("/", "/boot/firmware"), has_throttled=True)
    components = hd.node_components("pi-01", details, shape)
    return hd.discovery_messages(
        "homeassistant",
        hd.object_id("pi-01"),
        hd.node_device("pi-01", details),
        hd.origin_info("1"),
        components,
        per_entity,
    )


@pytest.mark.parametrize("per_entity", [False, True])
def test_the_kept_keys_give_the_same_discovery_as_the_whole_details(per_entity):
    kept: MachineDetails = {key: FULL[key] for key in hd.DETAIL_KEYS}  # type: ignore[assignment]

    assert messages(kept, per_entity) == messages(FULL, per_entity)


def test_the_publisher_announces_from_the_kept_keys():
    sent: list[tuple[str, bytes | None]] = []
    publisher = DiscoveryPublisher(
        lambda topic, payload, qos, retain: sent.append((topic, payload))
    )
    publisher.node_details("pi-01", FULL)
    publisher.node_metrics_shape("pi-01", ["/", "/boot/firmware"], True)

    [(topic, payload)] = sent
    [expected] = messages(FULL, False)
    assert topic == expected.topic
    assert payload is not None
    announced, whole = json.loads(payload), json.loads(expected.payload)
    assert announced["cmps"] == whole["cmps"]
    assert announced["dev"] == whole["dev"]
