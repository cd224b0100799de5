"""Home Assistant discovery: the configs HA would read, and when they are (re)published."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from cluster_protocol import (
    MACHINE_DETAILS_FIELDS,
    METRICS,
    METRICS_FIELDS,
    HomeAssistantSensor,
    Metric,
    TopicError,
)
from cluster_protocol.commands import ALWAYS_ACCEPTED, OPT_IN
from cluster_protocol.payloads import MachineDetails
from cluster_protocol.topics import master_topic
from master_service.home_assistant import discovery as hd
from master_service.home_assistant.bridge import HomeAssistantObserver
from master_service.home_assistant.publisher import DiscoveryPublisher

GIB = 1024**3
PI_DETAILS: MachineDetails = {
    "hostname": "raspberrypi",  # the image's default, left as is: not the node id
    "cpu_percent_used": 3.0,
    "ram": 4 * GIB,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "os": "Debian GNU/Linux 12 (bookworm)",
    "kernel": "6.6.31+rpt-rpi-v8",
    "arch": "aarch64",
    "model": "Raspberry Pi 4 Model B Rev 1.4",
    "boot_time": 1_700_000_000.4,
    "disk_total_bytes": 64 * GIB,
    "ip_addresses": ["192.168.1.21"],
    "agent_version": "0.1.0",
    "interval_s": 10,
}
PI_SHAPE = hd.NodeShape(("/", "/boot/firmware"), has_throttled=True)

# From https://www.home-assistant.io/integrations/sensor/#device-class (units per class) and
# the sensor entity's DEVICE_CLASS_STATE_CLASSES (which state classes each class allows).
DOCUMENTED_UNITS: dict[str | None, set[str | None]] = {
    "temperature": {"°C", "°F", "K"},
    "data_rate": {
        *("bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s"),
        *("KiB/s", "MiB/s", "GiB/s"),
    },
    "data_size": {
        *("bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"),
        *("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"),
    },
    "timestamp": {None},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
}
ALLOWED_STATE_CLASSES: dict[str | None, set[str | None]] = {
    "temperature": {"measurement", None},
    "data_rate": {"measurement", None},
    "data_size": {"measurement", "total", "total_increasing", None},
    "timestamp": {None},
    "frequency": {"measurement", None},
    None: {"measurement", "total", "total_increasing", None},
}
BINARY_SENSOR_CLASSES = {"connectivity", "problem"}
TEXT_SENSORS = {"hostname"}  # no unit, no state class: not a measurement
# Home Assistant's valid_entity_id (homeassistant/core.py): lower case, digits, single inner _.
HA_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")


def node_payload(
    node: str = "pi-01", details: MachineDetails = PI_DETAILS, shape: hd.NodeShape = PI_SHAPE
) -> dict[str, Any]:
    message = hd.device_message(
        "homeassistant",
        hd.object_id(node),
        hd.node_device(node, details),
        hd.origin_info("0.1.0"),
        hd.node_components(node, details, shape),
    )
    assert message.topic == f"homeassistant/device/picluster_{node}/config"
    payload: dict[str, Any] = json.loads(message.payload)
    return payload


def all_configs() -> list[tuple[str, dict[str, Any]]]:
    components = hd.node_components("pi-01", PI_DETAILS, PI_SHAPE) + hd.cluster_components()
    return [(c.platform, dict(c.config)) for c in components if c.platform != "button"]


# --- what Home Assistant reads -------------------------------------------------------------


def test_node_device_payload_has_the_documented_shape():
    payload = node_payload()
    assert set(payload) == {"dev", "o", "cmps"}
    assert payload["o"] == {"name": "picluster", "sw": "0.1.0"}
    assert payload["dev"] == {
        "ids": ["picluster_pi-01"],
        "name": "pi-01",  # the node id; the hostname "raspberrypi" is a diagnostic sensor
        "mdl": "Raspberry Pi 4 Model B Rev 1.4",
        "mf": "Raspberry Pi Ltd",
        "sw": "0.1.0",
        "via_device": "picluster__cluster",
    }
    for key, component in payload["cmps"].items():
        assert component["unique_id"] == f"picluster_pi-01_{key}"
        assert component["default_entity_id"] == f"{component['p']}.pi_01_{key}"
        assert component["object_id"] == f"pi_01_{key}"
        assert component["name"]
        if component["p"] == "button":
            continue  # buttons publish, they read nothing (see the button tests)
        assert component["p"] in {"sensor", "binary_sensor"}, key
        if key == "problem":  # the master's alerts (see the problem sensor tests)
            assert component["state_topic"] == "cluster/_master/alerts"
            continue
        assert component["state_topic"].startswith("cluster/pi-01/")


def test_unique_ids_never_change():
    # These ids are what HA keys history and user settings on: changing one orphans data.
    keys = set(node_payload()["cmps"])
    released = {
        "cpu_percent",
        "load_1",
        "memory_percent",
        "swap_percent",
        "disk_root_percent",
        "disk_boot_firmware_percent",
        "temperature_celsius",
        "net_rx_bytes_per_s",
        "net_tx_bytes_per_s",
        "hostname",
        "boot_time",
        "throttled",
        "refresh",
        "online",
        "problem",
    }
    assert released <= keys
    # Anything else is a metric added to the metric table since, under its own key.
    assert keys - released <= {m.key for m in METRICS if m.home_assistant is not None}
    assert [c.config["unique_id"] for c in hd.cluster_components()] == [
        "picluster__cluster_nodes_online",
        "picluster__cluster_cores_total",
        "picluster__cluster_ram_total",
        "picluster__cluster_cpu_percent_avg",
    ]


def test_a_node_named_cluster_does_not_collide_with_the_cluster_device():
    node_ids = node_payload("cluster")["dev"]["ids"]
    assert node_ids == ["picluster_cluster"]
    assert hd.cluster_device("0.1.0")["ids"] != node_ids
    assert hd.device_topic("homeassistant", hd.cluster_object_id()) != hd.device_topic(
        "homeassistant", hd.object_id("cluster")
    )


# --- device names and entity ids -----------------------------------------------------------


def test_two_nodes_with_one_hostname_are_two_devices_with_their_own_entity_ids():
    # Pis left as "raspberrypi", containers and VMs cloned from one image share a hostname;
    # named by it, HA showed one name twice and sensor.raspberrypi_cpu / ..._cpu_2.
    one, two = node_payload("pi-01"), node_payload("pi-02")
    assert (one["dev"]["name"], two["dev"]["name"]) == ("pi-01", "pi-02")
    first = {c["default_entity_id"] for c in one["cmps"].values()}
    second = {c["default_entity_id"] for c in two["cmps"].values()}
    assert first.isdisjoint(second)
    assert {"sensor.pi_01_cpu_percent", "binary_sensor.pi_01_online"} <= first
    assert {"sensor.pi_02_cpu_percent", "button.pi_02_refresh"} <= second
    assert not [i for i in first | second if "raspberrypi" in i]


@pytest.mark.parametrize(
    ("node", "slug"),
    [("pi-01", "pi_01"), ("node7", "node7"), ("a__b", "a_b"), ("web_", "web"), ("0-x-", "0_x")],
)
def test_entity_ids_are_pinned_and_valid_for_home_assistant(node, slug):
    details: MachineDetails = {**PI_DETAILS, "commands": ALL_COMMANDS}
    shape = hd.NodeShape(("/", "/mnt/a-b", "/media/USB Stick"), has_throttled=True)
    components = hd.node_components(node, details, shape)
    assert {c.platform for c in components} == {"sensor", "binary_sensor", "button"}
    for component in components:
        entity_id = component.config["default_entity_id"]
        assert HA_ENTITY_ID.match(entity_id), entity_id
        assert entity_id == f"{component.platform}.{slug}_{component.key}"
        # The option before Home Assistant 2025.10: the same id without the platform.
        assert component.config["object_id"] == entity_id.split(".", 1)[1]


def test_cluster_entity_ids_are_picluster_ones():
    assert [c.config["default_entity_id"] for c in hd.cluster_components()] == [
        "sensor.picluster_nodes_online",
        "sensor.picluster_cores_total",
        "sensor.picluster_ram_total",
        "sensor.picluster_cpu_percent_avg",
    ]


def test_the_hostname_is_a_diagnostic_sensor_not_the_device_name():
    hostname = node_payload()["cmps"]["hostname"]
    assert hostname["state_topic"] == "cluster/pi-01/machine_details"
    assert hostname["entity_category"] == "diagnostic"
    assert hostname["default_entity_id"] == "sensor.pi_01_hostname"
    env = ha_environment()
    details = envelope("machine_details", PI_DETAILS)
    assert render(env, hostname["value_template"], details) == "raspberrypi"


def test_a_new_hostname_changes_nothing_in_home_assistant(publisher, recorder):
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    recorder.take()
    # The Hostname sensor follows the retained details; device and entity ids stay as they are.
    publisher.node_details("pi-01", {**PI_DETAILS, "hostname": "pi-kitchen"})
    assert recorder.take() == []


# --- the metric table ---------------------------------------------------------------------


def test_every_home_assistant_metric_of_the_table_is_an_entity():
    cmps = node_payload()["cmps"]
    for metric in METRICS:
        sensor = metric.home_assistant
        if sensor is None:
            assert metric.key not in cmps
            continue
        keys = ["disk_root_percent", "disk_boot_firmware_percent"]
        for key in keys if metric.key == "disks" else [metric.key]:
            config = cmps[key]
            assert config["p"] == sensor.platform
            assert config.get("unit_of_measurement") == sensor.unit, key
            assert config.get("device_class") == sensor.device_class, key
            assert config.get("icon") == sensor.icon, key
            assert config.get("state_class") == sensor.state_class, key
            assert config.get("suggested_display_precision") == sensor.precision, key
            assert config["name"].startswith(sensor.name)
    assert cmps["disk_boot_firmware_percent"]["name"] == "Disk /boot/firmware"


def test_a_metric_added_to_the_table_gets_a_sensor(monkeypatch):
    fan = Metric(
        "fan_speed_rpm",
        "number|null",
        "rpm",
        "Case fan speed",
        home_assistant=HomeAssistantSensor("Fan", "rpm", icon="mdi:fan"),
    )
    monkeypatch.setattr(hd, "METRICS", (*METRICS, fan))
    config = node_payload()["cmps"]["fan_speed_rpm"]
    assert {k: v for k, v in config.items() if k != "availability"} == {
        "p": "sensor",
        "name": "Fan",
        "unique_id": "picluster_pi-01_fan_speed_rpm",
        "object_id": "pi_01_fan_speed_rpm",
        "default_entity_id": "sensor.pi_01_fan_speed_rpm",
        "state_topic": "cluster/pi-01/metrics",
        "value_template": "{{ value_json.payload.fan_speed_rpm | default(None) }}",
        "availability_mode": "all",
        "expire_after": 30,
        "state_class": "measurement",
        "unit_of_measurement": "rpm",
        "icon": "mdi:fan",
    }
    env = ha_environment()
    sample = envelope("metrics", {**METRICS_SAMPLE, "fan_speed_rpm": 1800})
    assert render(env, config["value_template"], sample) == "1800"
    # An agent older than the metric does not send it: unknown, not an error per sample.
    assert render(env, config["value_template"], envelope("metrics", METRICS_SAMPLE)) == "None"


@pytest.mark.parametrize(("platform", "config"), all_configs())
def test_classes_units_and_state_classes_are_the_documented_ones(platform, config):
    device_class = config.get("device_class")
    if config["unique_id"].removeprefix("picluster_pi-01_") in TEXT_SENSORS:
        assert {"device_class", "unit_of_measurement", "state_class"}.isdisjoint(config)
        return
    if platform == "binary_sensor":
        assert device_class in BINARY_SENSOR_CLASSES
        assert "unit_of_measurement" not in config
        assert "state_class" not in config
        return
    unit = config.get("unit_of_measurement")
    if device_class in DOCUMENTED_UNITS:
        assert unit in DOCUMENTED_UNITS[device_class]
    else:
        assert device_class is None
        assert unit in {None, "%"}
    assert config.get("state_class") in ALLOWED_STATE_CLASSES[device_class]
    if device_class != "timestamp":
        # Long-term statistics (the history graphs users want) need a state class.
        assert config["state_class"] == "measurement"


def test_specific_entities_carry_the_right_classes():
    cmps = node_payload()["cmps"]
    assert cmps["cpu_percent"]["unit_of_measurement"] == "%"
    assert "device_class" not in cmps["cpu_percent"]
    assert cmps["temperature_celsius"]["device_class"] == "temperature"
    assert cmps["temperature_celsius"]["unit_of_measurement"] == "°C"
    assert cmps["net_rx_bytes_per_s"]["device_class"] == "data_rate"
    assert cmps["net_rx_bytes_per_s"]["unit_of_measurement"] == "B/s"
    assert cmps["boot_time"]["device_class"] == "timestamp"
    assert cmps["boot_time"]["state_topic"] == "cluster/pi-01/machine_details"
    assert cmps["throttled"]["device_class"] == "problem"
    assert cmps["online"]["device_class"] == "connectivity"
    assert (cmps["online"]["payload_on"], cmps["online"]["payload_off"]) == ("online", "offline")
    ram = next(c for c in hd.cluster_components() if c.key == "ram_total")
    assert (ram.config["device_class"], ram.config["unit_of_measurement"]) == ("data_size", "GiB")


def test_metric_entities_need_both_the_node_and_the_master_online():
    cmps = node_payload()["cmps"]
    for key, component in cmps.items():
        topics = [a["topic"] for a in component["availability"]]
        if key in ("online", "problem"):
            # Connectivity must still say "disconnected" while the node is offline, and the
            # problem sensor must show the node_offline alert then.
            assert topics == ["cluster/_master/status"]
            continue
        assert topics == ["cluster/pi-01/status", "cluster/_master/status"], key
        assert component["availability_mode"] == "all"
        for entry in component["availability"]:
            assert entry["value_template"] == "{{ value_json.payload.state }}"


def test_metrics_expire_after_three_intervals():
    cmps = node_payload()["cmps"]
    on_metrics = [k for k, c in cmps.items() if c.get("state_topic") == "cluster/pi-01/metrics"]
    # Every metric of the table shown in HA (the disks once per mount) reads the metrics topic.
    table = [m.key for m in METRICS if m.home_assistant is not None and m.key != "disks"]
    assert len(on_metrics) == len(table) + len(PI_SHAPE.mounts)
    assert {cmps[k]["expire_after"] for k in on_metrics} == {30}
    assert "expire_after" not in cmps["boot_time"]  # retained, sent once per connect
    assert "expire_after" not in cmps["online"]


@pytest.mark.parametrize(
    ("interval_s", "expected"),
    [(10, 30), (2.5, 10), (7.1, 22), (60, 180), (None, 30), ("10", 30), (0, 30), (True, 30)],
)
def test_expire_after(interval_s, expected):
    assert hd.expire_after_s(interval_s) == expected


def test_non_pi_nodes_get_no_manufacturer_and_no_throttling_sensor():
    details: MachineDetails = {
        **PI_DETAILS,
        "hostname": "",
        "model": None,
        "agent_version": "0.2.0",
    }
    payload = node_payload("x86-box", details, hd.NodeShape(("/",), has_throttled=False))
    assert payload["dev"] == {
        "ids": ["picluster_x86-box"],
        "name": "x86-box",
        "sw": "0.2.0",
        "via_device": "picluster__cluster",
    }
    assert "throttled" not in payload["cmps"]
    other: MachineDetails = {**PI_DETAILS, "model": "ODROID-N2+"}
    assert "mf" not in node_payload(details=other)["dev"]


def test_disk_keys_are_stable_and_distinct():
    assert hd.disk_key("/") == "disk_root_percent"
    assert hd.disk_key("/boot/firmware") == "disk_boot_firmware_percent"
    odd = ["/mnt/a-b", "/mnt/a_b", "/mnt/A b", "/media/usb", "/media/usb/"]
    keys = [hd.disk_key(m) for m in odd]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"disk_[a-z0-9_]+_percent", k) for k in keys)
    assert keys == [hd.disk_key(m) for m in odd]  # pure: same mount, same key


def test_per_entity_form_uses_one_topic_per_entity_without_platform_key():
    components = hd.node_components("pi-01", PI_DETAILS, PI_SHAPE)
    messages = hd.entity_messages(
        "ha", hd.object_id("pi-01"), hd.node_device("pi-01", PI_DETAILS), {"name": "x"}, components
    )
    assert [m.topic for m in messages] == [
        f"ha/{c.platform}/picluster_pi-01/{c.key}/config" for c in components
    ]
    cpu = json.loads(messages[0].payload)
    assert "p" not in cpu
    assert cpu["dev"]["ids"] == ["picluster_pi-01"]
    assert cpu["o"] == {"name": "x"}
    assert cpu["unique_id"] == "picluster_pi-01_cpu_percent"


def test_clear_messages_cover_both_forms():
    components = hd.node_components("pi-01", PI_DETAILS, PI_SHAPE)
    messages = hd.clear_messages("homeassistant", "picluster_pi-01", components)
    assert all(m.payload == b"" for m in messages)
    topics = {m.topic for m in messages}
    assert "homeassistant/device/picluster_pi-01/config" in topics
    assert "homeassistant/binary_sensor/picluster_pi-01/throttled/config" in topics
    assert len(topics) == 1 + len(components)


def test_cluster_device_reads_the_masters_summary():
    components = hd.cluster_components("lab")
    for component in components:
        assert component.config["state_topic"] == "lab/_master/cluster"
        assert [a["topic"] for a in component.config["availability"]] == ["lab/_master/status"]
    assert hd.cluster_summary_topic("lab") == "lab/_master/cluster"
    assert hd.ha_command_topic("lab") == "lab/_master/ha_command"
    with pytest.raises(TopicError):
        master_topic("cluster/x", "lab")


@pytest.mark.parametrize("prefix", ["", "/ha", "ha/", "ha/#", "h+a"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(ValueError, match="prefix"):
        DiscoveryPublisher(lambda *a: None, prefix=prefix)


# --- templates ----------------------------------------------------------------------------

PAYLOAD_KEY = re.compile(r"value_json\.payload\.([a-z0-9_]+)")


def all_templates() -> list[str]:
    templates = []
    for _, config in all_configs():
        templates.append(config["value_template"])
        templates += [a["value_template"] for a in config.get("availability", [])]
    return templates


@pytest.mark.parametrize("template", all_templates())
def test_templates_are_balanced_and_read_documented_keys(template):
    assert template.count("{{") == template.count("}}")
    assert template.count("{%") == template.count("%}")
    documented = (
        set(METRICS_FIELDS) | set(MACHINE_DETAILS_FIELDS) | set(hd.CLUSTER_SUMMARY_KEYS)
    ) | {"state", "firing"}  # firing: the master's alerts payload (problem sensors)
    for key in PAYLOAD_KEY.findall(template):
        assert key in documented, f"{key} is not a documented payload key"


def ha_environment() -> Any:
    """A Jinja environment close to HA's for these templates (as_datetime; strict on typos)."""
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 belongs in the test extra")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def as_datetime(value: Any) -> datetime:
        return datetime.fromtimestamp(float(value), UTC)

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.globals["as_datetime"] = as_datetime
    env.filters["as_datetime"] = as_datetime
    env.globals["now"] = lambda: datetime.now(UTC)
    return env


def render(env: Any, template: str, envelope: dict[str, Any]) -> str:
    raw = json.dumps(envelope)
    return str(env.from_string(template).render(value=raw, value_json=json.loads(raw)))


def envelope(
    message_type: str, payload: Mapping[str, object], node: str = "pi-01"
) -> dict[str, Any]:
    return {"v": 1, "type": message_type, "node": node, "ts": 1.7e9, "seq": 7, "payload": payload}


METRICS_SAMPLE: dict[str, Any] = {
    "cpu_percent": 12.5,
    "cpu_percent_per_core": [10.0, 15.0],
    "load_1": 0.42,
    "load_5": 0.3,
    "load_15": 0.2,
    "memory_total_bytes": 4 * GIB,
    "memory_available_bytes": 3 * GIB,
    "memory_percent": 25.0,
    "swap_percent": None,
    "disks": [
        {"mount": "/", "total_bytes": 64, "used_bytes": 26, "percent": 41.0},
        {"mount": "/boot/firmware", "total_bytes": 512, "used_bytes": 61, "percent": 12.0},
    ],
    "disk_read_bytes_per_s": 0.0,
    "disk_write_bytes_per_s": 512.0,
    "net_rx_bytes_per_s": 1234.5,
    "net_tx_bytes_per_s": 99.0,
    "temperature_celsius": 48.2,
    "uptime_s": 3600.0,
    "process_count": 120,
    "throttled": {
        "raw": "0x50005",
        "under_voltage": True,
        "freq_capped": False,
        "throttled": True,
        "soft_temp_limit": False,
        "under_voltage_occurred": True,
        "freq_capped_occurred": False,
        "throttled_occurred": True,
        "soft_temp_limit_occurred": False,
    },
    "spool_dropped": 0,
}


def test_node_templates_render_the_values_ha_will_show():
    env = ha_environment()
    cmps = node_payload()["cmps"]
    metrics = envelope("metrics", METRICS_SAMPLE)
    on_metrics = {k: c for k, c in cmps.items() if c.get("state_topic", "").endswith("/metrics")}
    got = {k: render(env, c["value_template"], metrics) for k, c in on_metrics.items()}
    assert got["cpu_percent"] == "12.5"
    assert got["load_1"] == "0.42"
    assert got["memory_percent"] == "25.0"
    assert got["swap_percent"] == "None"  # HA's PAYLOAD_NONE: the sensor shows unknown
    assert got["disk_root_percent"] == "41.0"
    assert got["disk_boot_firmware_percent"] == "12.0"
    assert got["temperature_celsius"] == "48.2"
    assert (got["net_rx_bytes_per_s"], got["net_tx_bytes_per_s"]) == ("1234.5", "99.0")
    assert got["throttled"] == "ON"

    details = envelope("machine_details", PI_DETAILS)
    boot = render(env, cmps["boot_time"]["value_template"], details)
    assert datetime.fromisoformat(boot) == datetime.fromtimestamp(1_700_000_000, UTC)

    status = envelope("status", {"state": "offline"})
    assert render(env, cmps["online"]["value_template"], status) == "offline"
    for entry in cmps["cpu_percent"]["availability"]:
        assert render(env, entry["value_template"], status) == "offline"
    legacy = {"type": "status", "payload": {"state": "online"}}  # the two-key original form
    assert render(env, cmps["online"]["value_template"], legacy) == "online"


@pytest.mark.parametrize(
    ("throttled", "expected"),
    [
        (None, "None"),
        ({**METRICS_SAMPLE["throttled"], "under_voltage": False, "throttled": False}, "OFF"),
        ({**METRICS_SAMPLE["throttled"], "under_voltage": False, "throttled": False,
          "soft_temp_limit": True}, "ON"),
    ],
)  # fmt: skip
def test_throttling_template(throttled, expected):
    env = ha_environment()
    metrics = envelope("metrics", {**METRICS_SAMPLE, "throttled": throttled})
    assert render(env, hd.THROTTLED_TEMPLATE, metrics) == expected


@pytest.mark.parametrize("mount", ["/mnt/usb", '/mnt/we"ird\\name', "/media/ümlaut"])
def test_disk_template_handles_absent_and_odd_mounts(mount):
    env = ha_environment()
    template = hd.disk_template(mount)
    assert render(env, template, envelope("metrics", METRICS_SAMPLE)) == "None"
    disks = [
        *METRICS_SAMPLE["disks"],
        {"mount": mount, "total_bytes": 1, "used_bytes": 1, "percent": 7},
    ]
    assert render(env, template, envelope("metrics", {**METRICS_SAMPLE, "disks": disks})) == "7"


def test_cluster_templates_render():
    env = ha_environment()
    summary = envelope(
        "cluster",
        {
            "nodes_total": 4,
            "online": 3,
            "offline": 1,
            "stale": 0,
            "cores_total": 16,
            "ram_total_bytes": 16 * GIB,
            "cpu_percent_avg": None,
        },
        node="_master",
    )
    got = {c.key: render(env, c.config["value_template"], summary) for c in hd.cluster_components()}
    assert got == {
        "nodes_online": "3",
        "cores_total": "16",
        "ram_total": "16.0",
        "cpu_percent_avg": "None",
    }


# --- the problem sensor (alerts) ------------------------------------------------------------


def alerts_envelope(firing: dict[str, list[str]]) -> dict[str, Any]:
    return envelope("alerts", {"firing": firing}, node="_master")


def shown(config: Mapping[str, Any], alerts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What HA shows for a problem sensor given one alerts envelope: state and attributes."""
    env = ha_environment()
    state = render(env, config["value_template"], alerts)
    attributes = json.loads(render(env, config["json_attributes_template"], alerts))
    return state, attributes


def test_every_node_has_a_problem_binary_sensor_on_the_masters_alerts():
    problem = node_payload()["cmps"]["problem"]
    assert problem["p"] == "binary_sensor"
    assert problem["device_class"] == "problem"
    assert problem["unique_id"] == "picluster_pi-01_problem"
    assert problem["default_entity_id"] == "binary_sensor.pi_01_problem"
    assert problem["object_id"] == "pi_01_problem"
    assert problem["state_topic"] == "cluster/_master/alerts"
    assert problem["json_attributes_topic"] == "cluster/_master/alerts"
    assert (problem["payload_on"], problem["payload_off"]) == ("ON", "OFF")
    assert "entity_category" not in problem  # a primary entity, not a diagnostic one
    lab = {c.key: c for c in hd.node_components("pi-01", PI_DETAILS, PI_SHAPE, "lab")}
    assert lab["problem"].config["state_topic"] == "lab/_master/alerts"
    assert hd.alerts_topic("lab") == "lab/_master/alerts"


def test_the_cluster_wide_alert_renders_for_the_cluster_key():
    # cluster_offline is filed under _cluster in the same payload, so a sensor for the cluster
    # device (not announced yet) reads it like a node's.
    problem = hd.problem_sensor(hd.CLUSTER_KEY)
    assert problem.config["default_entity_id"] == "binary_sensor.picluster_problem"
    alerts = alerts_envelope({"_cluster": ["cluster_offline"], "pi-01": ["node_offline"]})
    assert shown(problem.config, alerts) == ("ON", {"rules": ["cluster_offline"]})
    assert shown(problem.config, alerts_envelope({"pi-01": ["node_offline"]})) == (
        "OFF",
        {"rules": []},
    )


def test_problem_templates_show_the_nodes_own_firing_rules():
    one, two = node_payload("pi-01")["cmps"]["problem"], node_payload("pi-02")["cmps"]["problem"]
    alerts = alerts_envelope({"pi-01": ["disk_full", "temperature"]})
    assert shown(one, alerts) == ("ON", {"rules": ["disk_full", "temperature"]})
    assert shown(two, alerts) == ("OFF", {"rules": []})
    assert shown(one, alerts_envelope({})) == ("OFF", {"rules": []})


def test_per_entity_form_announces_the_problem_sensor(recorder):
    publisher = DiscoveryPublisher(recorder, per_entity=True)
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    topics = [t for t, *_ in recorder.take()]
    assert "homeassistant/binary_sensor/picluster_pi-01/problem/config" in topics


def alerts_published(recorder: Recorder) -> list[dict[str, Any]]:
    """The alerts envelopes published (retained, QoS 1), oldest first."""
    sent = [(p, q, r) for t, p, q, r in recorder.take() if t == "cluster/_master/alerts"]
    assert all(qos == 1 and retain for _, qos, retain in sent)
    return [json.loads(payload or b"") for payload, _, _ in sent]


def test_node_alerts_turn_the_problem_sensor_on_then_off(recorder):
    observer = HomeAssistantObserver(DiscoveryPublisher(recorder, clock=lambda: 1.7e9))
    problem = node_payload("pi-03")["cmps"]["problem"]
    observer.node_alerts("pi-03", ("temperature", "disk_full"))
    [on] = alerts_published(recorder)
    assert (on["type"], on["node"], on["ts"]) == ("alerts", "_master", 1.7e9)
    assert shown(problem, on) == ("ON", {"rules": ["disk_full", "temperature"]})
    observer.node_alerts("pi-03", ("disk_full", "temperature"))  # the same set: nothing new
    assert alerts_published(recorder) == []
    observer.node_alerts("pi-03", ())
    [off] = alerts_published(recorder)
    assert shown(problem, off) == ("OFF", {"rules": []})


def test_one_nodes_alerts_leave_the_others_as_they_are(recorder):
    observer = HomeAssistantObserver(DiscoveryPublisher(recorder))
    observer.node_alerts("pi-01", ("memory",))
    observer.node_alerts("pi-02", ("node_offline",))
    observer.node_alerts("pi-01", ())
    last = alerts_published(recorder)[-1]
    assert shown(node_payload("pi-01")["cmps"]["problem"], last)[0] == "OFF"
    assert shown(node_payload("pi-02")["cmps"]["problem"], last) == (
        "ON",
        {"rules": ["node_offline"]},
    )


def test_restore_replaces_a_stale_on_but_keeps_alerts_already_reported(recorder):
    # The broker still holds the previous run's ON for pi-01; its alert resolved meanwhile.
    observer = HomeAssistantObserver(DiscoveryPublisher(recorder))
    observer.restore([])
    [restored] = alerts_published(recorder)
    assert shown(node_payload("pi-01")["cmps"]["problem"], restored)[0] == "OFF"
    # Should the engine report before the restore runs, the restore must not undo it.
    observer = HomeAssistantObserver(DiscoveryPublisher(recorder))
    observer.node_alerts("pi-02", ("temperature",))
    observer.restore([])
    assert shown(node_payload("pi-02")["cmps"]["problem"], alerts_published(recorder)[-1]) == (
        "ON",
        {"rules": ["temperature"]},
    )


def test_restore_shows_the_alerts_the_engine_restored_unless_reported_since(recorder):
    # The engine reports a node only when its set changes: an alert still firing from the
    # previous run must show ON from the restore on.
    observer = HomeAssistantObserver(DiscoveryPublisher(recorder))
    observer.node_alerts("pi-02", ())  # resolved before the restore ran: newer than the database
    recorder.take()
    observer.restore([], {"pi-01": ["disk_full"], "pi-02": ["memory"], "_cluster": []})
    [restored] = alerts_published(recorder)
    assert restored["payload"] == {"firing": {"pi-01": ["disk_full"]}}
    assert shown(node_payload("pi-01")["cmps"]["problem"], restored) == (
        "ON",
        {"rules": ["disk_full"]},
    )
    assert shown(node_payload("pi-02")["cmps"]["problem"], restored)[0] == "OFF"
    observer.node_alerts("pi-01", ())
    [later] = alerts_published(recorder)
    assert shown(node_payload("pi-01")["cmps"]["problem"], later)[0] == "OFF"


def test_forgetting_a_node_drops_its_alerts(publisher, recorder):
    publisher.node_alerts("pi-01", ["memory"])
    recorder.take()
    publisher.forget("pi-01")
    [after] = alerts_published(recorder)
    assert after["payload"] == {"firing": {}}
    publisher.forget("pi-02")  # no alerts known: the alerts topic is left alone
    assert alerts_published(recorder) == []


# --- when the publisher publishes ---------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, int, bool]] = []

    def __call__(self, topic: str, payload: bytes | None, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, qos, retain))

    def take(self) -> list[tuple[str, bytes | None, int, bool]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def publisher(recorder: Recorder) -> DiscoveryPublisher:
    return DiscoveryPublisher(recorder)


def test_a_node_is_announced_once_details_and_first_metrics_are_known(publisher, recorder):
    publisher.node_details("pi-01", PI_DETAILS)
    assert recorder.take() == []  # without the disks, HA would drop their entities
    publisher.node_metrics_shape("pi-01", ["/", "/boot/firmware"], True)
    [(topic, payload, qos, retain)] = recorder.take()
    assert (topic, qos, retain) == ("homeassistant/device/picluster_pi-01/config", 1, True)
    assert payload is not None
    assert json.loads(payload) == node_payload() | {"o": json.loads(payload)["o"]}


def test_ordinary_metrics_publish_nothing(publisher, recorder):
    publisher.node_metrics_shape("pi-01", ["/"], False)
    publisher.node_details("pi-01", PI_DETAILS)
    recorder.take()
    for _ in range(100):
        publisher.node_metrics_shape("pi-01", ["/"], False)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    publisher.node_details("pi-01", {**PI_DETAILS, "cpu_percent_used": 99.0})  # not in config
    assert recorder.take() == []


def test_new_mount_or_throttling_republishes_but_disappearing_does_not(publisher, recorder):
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    recorder.take()
    publisher.node_metrics_shape("pi-01", ["/", "/mnt/usb"], False)
    [(_, payload, _, _)] = recorder.take()
    assert "disk_mnt_usb_percent" in json.loads(payload or b"")["cmps"]
    publisher.node_metrics_shape("pi-01", ["/"], False)  # unplugged: keep its entity
    publisher.node_metrics_shape("pi-01", ["/mnt/usb", "/"], False)  # order only
    assert recorder.take() == []
    publisher.node_metrics_shape("pi-01", ["/"], True)
    [(_, payload, _, _)] = recorder.take()
    cmps = json.loads(payload or b"")["cmps"]
    assert "throttled" in cmps
    assert "disk_mnt_usb_percent" in cmps
    publisher.node_metrics_shape("pi-01", ["/"], False)  # one failed vcgencmd read
    assert recorder.take() == []


def test_changed_details_republish(publisher, recorder):
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    recorder.take()
    publisher.node_details("pi-01", {**PI_DETAILS, "interval_s": 30})
    [(_, payload, _, _)] = recorder.take()
    assert json.loads(payload or b"")["cmps"]["cpu_percent"]["expire_after"] == 90
    publisher.node_details("pi-01", {**PI_DETAILS, "interval_s": 30, "agent_version": "0.2.0"})
    [(_, payload, _, _)] = recorder.take()
    assert json.loads(payload or b"")["dev"]["sw"] == "0.2.0"


def test_ha_birth_reannounces_everything_but_its_will_does_not(publisher, recorder):
    for node in ("pi-01", "pi-02"):
        publisher.node_details(node, {**PI_DETAILS, "hostname": node})
        publisher.node_metrics_shape(node, ["/"], False)
    publisher.node_details("pi-03", PI_DETAILS)  # no metrics yet: nothing to announce
    recorder.take()
    assert publisher.ha_status_topic == "homeassistant/status"
    publisher.on_ha_status(b"offline")
    assert recorder.take() == []
    publisher.on_ha_status(b"online")
    assert sorted(t for t, *_ in recorder.take()) == [
        "cluster/_master/alerts",  # retained already; again in case the broker lost it
        "homeassistant/device/picluster__cluster/config",
        "homeassistant/device/picluster_pi-01/config",
        "homeassistant/device/picluster_pi-02/config",
    ]


def test_forget_clears_both_forms_and_is_not_reannounced(publisher, recorder):
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/", "/mnt/usb"], True)
    recorder.take()
    publisher.forget("pi-01")
    cleared = recorder.take()
    assert all(payload == b"" and retain for _, payload, _, retain in cleared)
    topics = {t for t, *_ in cleared}
    assert "homeassistant/device/picluster_pi-01/config" in topics
    assert "homeassistant/sensor/picluster_pi-01/disk_mnt_usb_percent/config" in topics
    assert "homeassistant/binary_sensor/picluster_pi-01/throttled/config" in topics
    assert "homeassistant/button/picluster_pi-01/refresh/config" in topics
    publisher.on_ha_status(b"online")
    assert [t for t, *_ in recorder.take()] == [
        "homeassistant/device/picluster__cluster/config",
        "cluster/_master/alerts",
    ]


def test_forget_of_a_node_unseen_since_start_uses_the_mounts_given(publisher, recorder):
    publisher.forget("pi-09", mounts=["/srv"])
    topics = {t for t, *_ in recorder.take()}
    assert "homeassistant/device/picluster_pi-09/config" in topics
    assert "homeassistant/sensor/picluster_pi-09/disk_srv_percent/config" in topics
    # Its details are unknown here, so every button a node could have had is cleared.
    for command in ("refresh", "reboot", "shutdown"):
        assert f"homeassistant/button/picluster_pi-09/{command}/config" in topics


def test_per_entity_form_publishes_only_the_entities_that_changed(recorder):
    publisher = DiscoveryPublisher(recorder, prefix="ha", per_entity=True)
    publisher.node_details("pi-01", PI_DETAILS)
    publisher.node_metrics_shape("pi-01", ["/"], False)
    first = recorder.take()
    entities = hd.node_components("pi-01", PI_DETAILS, hd.NodeShape(("/",)))
    assert len(first) == len(entities)  # one message per entity, Refresh button included
    assert "refresh" in {c.key for c in entities}
    assert all(t.startswith("ha/") and t.endswith("/config") for t, *_ in first)
    assert not any(t.startswith("ha/device/") for t, *_ in first)
    publisher.node_metrics_shape("pi-01", ["/", "/data"], False)
    assert [t for t, *_ in recorder.take()] == [
        "ha/sensor/picluster_pi-01/disk_data_percent/config"
    ]


def test_cluster_announcement(publisher, recorder):
    publisher.announce_cluster()
    [(topic, payload, qos, retain)] = recorder.take()
    assert (topic, qos, retain) == ("homeassistant/device/picluster__cluster/config", 1, True)
    body = json.loads(payload or b"")
    assert body["dev"]["ids"] == ["picluster__cluster"]
    assert set(body["cmps"]) == {"nodes_online", "cores_total", "ram_total", "cpu_percent_avg"}


# --- buttons ------------------------------------------------------------------------------

ALL_COMMANDS = ["ping", "refresh", "set_interval", "run", "reboot", "shutdown"]


def buttons(details: MachineDetails, prefix: str = "cluster") -> dict[str, dict[str, Any]]:
    components = hd.node_components("pi-01", details, PI_SHAPE, prefix)
    return {c.key: dict(c.config) for c in components if c.platform == "button"}


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (None, ["refresh"]),  # an older agent that advertises nothing: refresh is harmless
        (["ping", "refresh", "set_interval", "run"], ["refresh"]),
        (["ping", "refresh", "set_interval", "run", "reboot"], ["refresh", "reboot"]),
        (ALL_COMMANDS, ["refresh", "reboot", "shutdown"]),
        ("reboot", ["refresh"]),  # not a list: nothing is inferred from it
        ([], ["refresh"]),
    ],
)
def test_reboot_and_shutdown_buttons_only_where_the_node_enables_them(commands, expected):
    details: MachineDetails = (
        PI_DETAILS if commands is None else {**PI_DETAILS, "commands": commands}
    )
    got = buttons(details)
    assert list(got) == expected
    assert [c["unique_id"] for c in got.values()] == [f"picluster_pi-01_{k}" for k in expected]


def test_every_button_is_a_node_command_and_only_opt_in_ones_need_consent():
    # A button the node does not know would be pressed in vain; one needing consent shown
    # unasked would offer a reboot the node refuses.
    pressed = {c for c, *_ in hd.BUTTONS}
    assert pressed <= set(ALWAYS_ACCEPTED) | set(OPT_IN)
    assert list(buttons({**PI_DETAILS, "commands": []})) == sorted(
        pressed & set(ALWAYS_ACCEPTED), key=[c for c, *_ in hd.BUTTONS].index
    )


def test_buttons_publish_to_the_master_never_to_the_node():
    for key, button in buttons({**PI_DETAILS, "commands": ALL_COMMANDS}, "lab").items():
        # Home Assistant's broker user may not write cluster/<node>/cmd/#: the master relays.
        assert button["command_topic"] == "lab/_master/ha_command", key
        assert button["qos"] == 1
        assert not button.get("retain", False)  # a retained press would replay on reconnect
        assert {"state_topic", "value_template", "expire_after", "state_class"}.isdisjoint(button)
        assert [a["topic"] for a in button["availability"]] == [
            "lab/pi-01/status",
            "lab/_master/status",
        ]
        assert button["availability_mode"] == "all"


def test_button_classes_and_categories_are_home_assistants():
    got = buttons({**PI_DETAILS, "commands": ALL_COMMANDS})
    # HA's button device classes are identify, restart and update (none fits shutdown).
    assert {k: b.get("device_class") for k, b in got.items()} == {
        "refresh": None,
        "reboot": "restart",
        "shutdown": None,
    }
    assert {k: b["entity_category"] for k, b in got.items()} == {
        "refresh": "diagnostic",
        "reboot": "config",
        "shutdown": "config",
    }
    assert {k: b["name"] for k, b in got.items()} == {
        "refresh": "Refresh",
        "reboot": "Reboot",
        "shutdown": "Shutdown",
    }


@pytest.mark.parametrize("command", ["refresh", "reboot", "shutdown"])
def test_a_press_renders_to_what_the_master_accepts(command):
    from master_service.home_assistant.presses import parse_press

    env = ha_environment()
    template = buttons({**PI_DETAILS, "commands": ALL_COMMANDS})[command]["command_template"]
    pressed = env.from_string(template).render(value="PRESS")
    now = datetime.now(UTC).timestamp()
    body = json.loads(pressed)
    assert (body["node"], body["command"]) == ("pi-01", command)
    assert abs(body["ts"] - now) < 5
    press = parse_press(pressed.encode(), now)
    assert (press.node, press.command) == ("pi-01", command)


def test_enabling_reboot_on_a_node_adds_its_button(publisher, recorder):
    publisher.node_details("pi-01", {**PI_DETAILS, "commands": ["ping", "refresh"]})
    publisher.node_metrics_shape("pi-01", ["/"], False)
    first = json.loads(recorder.take()[0][1] or b"")
    assert "reboot" not in first["cmps"]
    publisher.node_details("pi-01", {**PI_DETAILS, "commands": ["ping", "refresh", "reboot"]})
    [(topic, payload, _, retain)] = recorder.take()
    assert (topic, retain) == ("homeassistant/device/picluster_pi-01/config", True)
    assert json.loads(payload or b"")["cmps"]["reboot"]["device_class"] == "restart"
