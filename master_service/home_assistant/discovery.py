"""Home Assistant MQTT discovery: topics and payloads for the nodes and the cluster (pure).

Follows Home Assistant's MQTT discovery documentation (see docs/home-assistant.md): the
device-based form `<prefix>/device/<object_id>/config` with `dev`, `o` and `cmps`, and the
older per-entity form `<prefix>/<platform>/<object_id>/<key>/config`. Entities read the nodes'
own topics through value templates, so nothing is re-published per sample. Each device also
has a `problem` binary sensor reading the master's retained alerts topic.

A node's device is named by its node id, never its hostname (Pis left as `raspberrypi` and
cloned VMs share one), and each entity's id is pinned to `<platform>.<node>_<key>`. The metric
sensors come from the metric table (`cluster_protocol.METRICS`): a metric with a
`home_assistant` entry there gets a sensor here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

from cluster_protocol import (
    DEFAULT_PREFIX,
    METRICS,
    HomeAssistantSensor,
    MessageType,
    master_status_topic,
    topic_for,
)
from cluster_protocol.commands import ALWAYS_ACCEPTED, OPT_IN, CommandName
from cluster_protocol.payloads import MachineDetails
from cluster_protocol.settings import DEFAULT_INTERVAL_S
from cluster_protocol.topics import master_topic

DEFAULT_HA_PREFIX: Final = "homeassistant"
HA_STATUS_LEVEL: Final = "status"
HA_ONLINE: Final = b"online"

ID_PREFIX: Final = "picluster"
ORIGIN_NAME: Final = "picluster"
# The cluster is keyed like a reserved node id ('_' cannot start a real node id), so a node
# named "cluster" can never share its device topic or identifiers.
CLUSTER_KEY: Final = "_cluster"
CLUSTER_DEVICE_NAME: Final = "picluster"
# The cluster's entity ids: sensor.picluster_nodes_online (its keys are no node metric's).
CLUSTER_ENTITY_PREFIX: Final = "picluster"
CLUSTER_SUMMARY_TYPE: Final = "cluster"
# The master's retained `<prefix>/_master/alerts`: which rules fire on which node. One topic for
# all nodes, because the master may only write under `<prefix>/_master/` (mosquitto/acl) and its
# own ingest drops any deeper topic there; a node's own subtree is the node's to write.
ALERTS_TYPE: Final = "alerts"
PROBLEM_KEY: Final = "problem"
CLUSTER_SUMMARY_KEYS: Final = (
    "nodes_total",
    "online",
    "offline",
    "stale",
    "cores_total",
    "ram_total_bytes",
    "cpu_percent_avg",
)
PI_MANUFACTURER: Final = "Raspberry Pi Ltd"
# Home Assistant may not write commands (mosquitto/acl): its buttons publish here, and the
# master checks each press and sends the command itself (master_service/home_assistant/presses.py).
HA_COMMAND_TYPE: Final = "ha_command"
# Pressable commands in the order the buttons appear: (command, name, device class, category,
# icon). Button device classes are identify/restart/update (HA's button docs); "config" keeps
# a device-wide "press everything" action or an area call from rebooting a node.
BUTTONS: Final = (
    (CommandName.REFRESH, "Refresh", None, "diagnostic", "mdi:refresh"),
    (CommandName.REBOOT, "Reboot", "restart", "config", None),
    (CommandName.SHUTDOWN, "Shutdown", None, "config", "mdi:power"),
)
# Buttons for commands every node obeys (refresh) are harmless, so every node gets them,
# advertised or not; the opt-in ones (reboot, shutdown) only where the node advertises them.
ALWAYS_PRESSABLE: Final = frozenset(c for c, *_ in BUTTONS if c in ALWAYS_ACCEPTED)

# The machine details keys discovery reads (node_device, node_components): the publisher
# keeps only these per node (tests/unit/test_ha_pacing_memory.py checks they suffice).
DETAIL_KEYS: Final = ("agent_version", "commands", "interval_s", "model")

EXPIRE_INTERVALS: Final = 3
MIN_EXPIRE_AFTER_S: Final = 10
GIB: Final = 1024**3

# The envelope's status payload is {"state": "online"|"offline"}: HA's default
# payload_available / payload_not_available compare against exactly those words.
STATUS_TEMPLATE: Final = "{{ value_json.payload.state }}"

_SLUG_UNSAFE: Final = re.compile(r"[^a-z0-9]+")
# Metrics whose Home Assistant entities are built by hand below, not from the plain template.
DISKS_METRIC: Final = "disks"
THROTTLED_METRIC: Final = "throttled"
_CLEAN_MOUNT: Final = re.compile(r"^(/[a-z0-9]+)+$")
_TOPIC_UNSAFE: Final = re.compile(r"[+#\x00]")


@dataclass(frozen=True, slots=True)
class Component:
    """One entity: its key (cmps id and unique_id suffix), platform and HA options."""

    key: str
    platform: str
    config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """One retained discovery publish; an empty payload clears the topic."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class NodeShape:
    """What a node's metrics carry that changes which entities exist."""

    mounts: tuple[str, ...] = ()
    has_throttled: bool = False


def origin_version() -> str:
    """The installed picluster version, for the origin and the cluster device."""
    try:
        return metadata.version("picluster")
    except metadata.PackageNotFoundError:
        return "unknown"


def origin_info(sw_version: str | None = None, url: str | None = None) -> dict[str, str]:
    """The `o` mapping: which application sent the discovery (required by device discovery)."""
    info = {"name": ORIGIN_NAME, "sw": sw_version or origin_version()}
    if url:
        info["url"] = url
    return info


def validate_prefix(prefix: str, what: str = "discovery prefix") -> str:
    """Return the prefix when it is a usable topic prefix; raise ValueError otherwise."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or _TOPIC_UNSAFE.search(prefix):
        raise ValueError(f"{what} {prefix!r} must be non-empty, without wildcards or edge '/'")
    return prefix


def object_id(node: str) -> str:
    """The device's id in topics and identifiers: `picluster_<node>`."""
    return f"{ID_PREFIX}_{node}"


def unique_id(node: str, key: str) -> str:
    """An entity's stable unique_id: `picluster_<node>_<key>`; never change it."""
    return f"{ID_PREFIX}_{node}_{key}"


def cluster_object_id() -> str:
    """The cluster device's id in topics and identifiers."""
    return object_id(CLUSTER_KEY)


def entity_slug(node: str) -> str:
    """A node id as Home Assistant's entity ids spell it: `pi-01` -> `pi_01`.

    Entity ids allow only lower-case letters, digits and single inner underscores, so every
    other run of characters becomes one `_`. Two ids differing only there ("pi-1", "pi_1")
    share a slug; Home Assistant then gives the second entity a `_2` suffix.
    """
    if node == CLUSTER_KEY:
        return CLUSTER_ENTITY_PREFIX
    return _SLUG_UNSAFE.sub("_", node.lower()).strip("_")


def pinned_entity_id(platform: str, node: str, key: str) -> dict[str, str]:
    """The options that make Home Assistant name an entity `<platform>.<node>_<key>`.

    `default_entity_id` is the option since Home Assistant 2025.10; `object_id` the one before
    (deprecated in 2025.10, ignored from 2026.4). Both are sent: older releases drop the
    unknown `default_entity_id`, 2025.10 and later use it and do not warn about `object_id`
    when it is there. Either only suggests the id: an entity already registered keeps its own.
    """
    suggested = f"{entity_slug(node)}_{_SLUG_UNSAFE.sub('_', key).strip('_')}"
    return {"object_id": suggested, "default_entity_id": f"{platform}.{suggested}"}


def ha_status_topic(prefix: str = DEFAULT_HA_PREFIX) -> str:
    """Where Home Assistant publishes its birth (`online`) and will (`offline`)."""
    return f"{prefix}/{HA_STATUS_LEVEL}"


def cluster_summary_topic(cluster_prefix: str = DEFAULT_PREFIX) -> str:
    """The master's retained cluster summary the cluster device's sensors read."""
    return master_topic(CLUSTER_SUMMARY_TYPE, cluster_prefix)


def alerts_topic(cluster_prefix: str = DEFAULT_PREFIX) -> str:
    """The master's retained firing alerts, read by every `problem` binary sensor."""
    return master_topic(ALERTS_TYPE, cluster_prefix)


def ha_command_topic(cluster_prefix: str = DEFAULT_PREFIX) -> str:
    """Where Home Assistant's buttons publish their presses for the master to check and send."""
    return master_topic(HA_COMMAND_TYPE, cluster_prefix)


def press_template(node: str, command: str) -> str:
    """The button's command_template: which node and command, and when it was pressed.

    The time lets the master refuse a press that waited in a queue (or was retained) long
    enough to surprise anyone, e.g. a reboot delivered after a master outage.
    """
    fixed = json.dumps({"node": node, "command": command}, separators=(",", ":"))
    return fixed[:-1] + ',"ts":{{ now().timestamp() | round(3) }}}'


def pressable_commands(details: MachineDetails) -> list[str]:
    """The buttons a node gets: refresh always, reboot/shutdown only when it advertises them."""
    advertised = details.get("commands")
    offered = set(advertised) if isinstance(advertised, list) else set()
    return [
        command
        for command, *_ in BUTTONS
        if command in ALWAYS_PRESSABLE or (command in OPT_IN and command in offered)
    ]


def device_topic(prefix: str, device_object_id: str) -> str:
    """Device-based discovery topic (Home Assistant 2024.12 and later)."""
    return f"{prefix}/device/{device_object_id}/config"


def entity_topic(prefix: str, platform: str, device_object_id: str, key: str) -> str:
    """Per-entity discovery topic, the older form: one message per entity."""
    return f"{prefix}/{platform}/{device_object_id}/{key}/config"


def expire_after_s(interval_s: object) -> int:
    """Seconds without a sample before HA marks a value stale: 3 intervals, rounded up."""
    interval = DEFAULT_INTERVAL_S
    if (
        isinstance(interval_s, int | float)
        and not isinstance(interval_s, bool)
        and math.isfinite(interval_s)
        and interval_s > 0
    ):
        interval = float(interval_s)
    return max(MIN_EXPIRE_AFTER_S, math.ceil(EXPIRE_INTERVALS * interval))


def disk_key(mount: str) -> str:
    """A stable component key for a mount point, e.g. "/" -> "disk_root_percent".

    A mount of only lower-case letters, digits and single slashes maps one-to-one to its
    slug; any other mount gets a short hash of its exact path as well, so two mounts that
    slug alike ("/mnt/a-b", "/mnt/a_b") never share a unique_id.
    """
    slug = _SLUG_UNSAFE.sub("_", mount.lower()).strip("_") or "root"
    if mount != "/" and not _CLEAN_MOUNT.match(mount):
        slug = f"{slug}_{hashlib.sha256(mount.encode()).hexdigest()[:8]}"
    return f"disk_{slug}_percent"


def node_device(node: str, details: MachineDetails) -> dict[str, Any]:
    """The `dev` mapping of a node: named by its node id; model, maker, software, via.

    The hostname is not part of it: it is the node's "Hostname" diagnostic sensor.
    """
    device: dict[str, Any] = {"ids": [object_id(node)], "name": node}
    model = details.get("model")
    if isinstance(model, str) and model.strip():
        device["mdl"] = model.strip()
        if model.startswith("Raspberry Pi"):
            device["mf"] = PI_MANUFACTURER
    agent_version = details.get("agent_version")
    if isinstance(agent_version, str) and agent_version:
        device["sw"] = agent_version
    device["via_device"] = cluster_object_id()
    return device


def cluster_device(sw_version: str | None = None) -> dict[str, Any]:
    """The `dev` mapping of the cluster itself, the parent of every node device."""
    return {
        "ids": [cluster_object_id()],
        "name": CLUSTER_DEVICE_NAME,
        "mdl": "Cluster",
        "sw": sw_version or origin_version(),
    }


def _availability(*topics: str) -> list[dict[str, str]]:
    return [{"topic": topic, "value_template": STATUS_TEMPLATE} for topic in topics]


def _sensor(
    node: str,
    key: str,
    name: str,
    state_topic: str,
    template: str,
    availability: list[dict[str, str]],
    **options: Any,
) -> Component:
    platform = options.pop("platform", "sensor")
    config: dict[str, Any] = {
        "name": name,
        "unique_id": unique_id(node, key),
        **pinned_entity_id(platform, node, key),
        "state_topic": state_topic,
        "value_template": template,
        "availability": availability,
        "availability_mode": "all",
    }
    config.update({option: value for option, value in options.items() if value is not None})
    return Component(key, platform, config)


def _metric_template(key: str) -> str:
    # `default` keeps a key an older agent does not send yet from rendering "" (and HA from
    # logging a template warning on every sample): "None" shows as unknown.
    return "{{ value_json.payload." + key + " | default(None) }}"


def disk_template(mount: str) -> str:
    """Template picking one mount's percent out of the `disks` list ("None" when absent)."""
    literal = json.dumps(mount)  # a valid Jinja string literal, quotes and all escaped
    return (
        "{% for d in value_json.payload.disks if d.mount == " + literal + " %}"
        "{% if loop.first %}{{ d.percent }}{% endif %}{% else %}None{% endfor %}"
    )


THROTTLED_TEMPLATE: Final = (
    "{% set t = value_json.payload.throttled %}"
    "{% if t is mapping %}"
    "{{ 'ON' if t.under_voltage or t.freq_capped or t.throttled or t.soft_temp_limit"
    " else 'OFF' }}"
    "{% else %}None{% endif %}"
)
BOOT_TIME_TEMPLATE: Final = "{{ as_datetime(value_json.payload.boot_time | int) }}"
HOSTNAME_TEMPLATE: Final = "{{ value_json.payload.hostname }}"
RAM_TOTAL_TEMPLATE: Final = (
    "{{ (value_json.payload.ram_total_bytes / " + str(GIB) + ") | round(2) }}"
)


def problem_template(node: str) -> str:
    """The problem sensor's state: ON while any rule fires on `node` in the alerts payload."""
    literal = json.dumps(node)  # a valid Jinja string literal
    return "{{ 'ON' if value_json.payload.firing.get(" + literal + ") else 'OFF' }}"


def problem_attributes_template(node: str) -> str:
    """The problem sensor's attributes: `{"rules": [...]}`, the names of the firing rules."""
    literal = json.dumps(node)
    return '{{ {"rules": value_json.payload.firing.get(' + literal + ", [])} | tojson }}"


def problem_sensor(node: str, cluster_prefix: str = DEFAULT_PREFIX) -> Component:
    """The `problem` binary sensor of a node (or of the cluster, for `cluster_offline`).

    Only the master's status gates it, like Connectivity: an offline node is itself an alert
    (node_offline), which a sensor gated by the node's status would hide as unavailable.
    """
    return _sensor(
        node,
        PROBLEM_KEY,
        "Problem",
        alerts_topic(cluster_prefix),
        problem_template(node),
        _availability(master_status_topic(cluster_prefix)),
        platform="binary_sensor",
        device_class="problem",
        payload_on="ON",
        payload_off="OFF",
        json_attributes_topic=alerts_topic(cluster_prefix),
        json_attributes_template=problem_attributes_template(node),
    )


def metric_options(sensor: HomeAssistantSensor) -> dict[str, Any]:
    """A metric table entry's Home Assistant options, in discovery's terms (None left out)."""
    options = {
        "platform": sensor.platform,
        "state_class": sensor.state_class,
        "device_class": sensor.device_class,
        "unit_of_measurement": sensor.unit,
        "icon": sensor.icon,
        "suggested_display_precision": sensor.precision,
    }
    return {option: value for option, value in options.items() if value is not None}


def node_components(
    node: str,
    details: MachineDetails,
    shape: NodeShape,
    cluster_prefix: str = DEFAULT_PREFIX,
) -> list[Component]:
    """Every entity of one node, in a stable order: the metric table's, then the rest."""
    metrics = topic_for(node, MessageType.METRICS, cluster_prefix)
    machine_details = topic_for(node, MessageType.MACHINE_DETAILS, cluster_prefix)
    status = topic_for(node, MessageType.STATUS, cluster_prefix)
    master = master_status_topic(cluster_prefix)
    both = _availability(status, master)
    expire = expire_after_s(details.get("interval_s"))

    def on_metrics(key: str, name: str, template: str, sensor: HomeAssistantSensor) -> Component:
        options = metric_options(sensor)
        return _sensor(node, key, name, metrics, template, both, expire_after=expire, **options)

    components = []
    for metric in METRICS:
        sensor = metric.home_assistant
        if sensor is None or not metric.in_payload:
            continue
        if metric.key == DISKS_METRIC:  # one sensor per mount the node has shown
            components += [
                on_metrics(disk_key(m), f"{sensor.name} {m}", disk_template(m), sensor)
                for m in sorted(set(shape.mounts))
            ]
        elif metric.key == THROTTLED_METRIC:  # Pi only: absent until a node reports flags
            if shape.has_throttled:
                components.append(on_metrics(metric.key, sensor.name, THROTTLED_TEMPLATE, sensor))
        else:
            components.append(
                on_metrics(metric.key, sensor.name, _metric_template(metric.key), sensor)
            )
    # machine_details is retained and re-sent on every connect, so no expire_after.
    components += [
        _sensor(
            node,
            "hostname",
            "Hostname",
            machine_details,
            HOSTNAME_TEMPLATE,
            both,
            icon="mdi:lan",
            entity_category="diagnostic",
        ),
        _sensor(
            node,
            "boot_time",
            "Last boot",
            machine_details,
            BOOT_TIME_TEMPLATE,
            both,
            device_class="timestamp",
            entity_category="diagnostic",
        ),
    ]
    components += node_buttons(node, details, both, cluster_prefix)
    # Connectivity must stay readable while the node is offline: only the master gates it.
    components.append(
        _sensor(
            node,
            "online",
            "Connectivity",
            status,
            STATUS_TEMPLATE,
            _availability(master),
            platform="binary_sensor",
            device_class="connectivity",
            payload_on="online",
            payload_off="offline",
            entity_category="diagnostic",
        )
    )
    components.append(problem_sensor(node, cluster_prefix))
    return components


def node_buttons(
    node: str,
    details: MachineDetails,
    availability: list[dict[str, str]],
    cluster_prefix: str = DEFAULT_PREFIX,
) -> list[Component]:
    """A node's command buttons; a press goes to the master, never to the node directly."""
    offered = pressable_commands(details)
    buttons = []
    for command, name, device_class, category, icon in BUTTONS:
        if command not in offered:
            continue
        config: dict[str, Any] = {
            "name": name,
            "unique_id": unique_id(node, command),
            **pinned_entity_id("button", node, command),
            "command_topic": ha_command_topic(cluster_prefix),
            "command_template": press_template(node, command),
            "qos": 1,  # a press must not be lost on the way; never retained (HA's default)
            "availability": availability,
            "availability_mode": "all",
            "entity_category": category,
        }
        if device_class is not None:
            config["device_class"] = device_class
        if icon is not None:
            config["icon"] = icon
        buttons.append(Component(command, "button", config))
    return buttons


def cluster_components(cluster_prefix: str = DEFAULT_PREFIX) -> list[Component]:
    """The cluster device's entities, read from the master's retained summary."""
    summary = cluster_summary_topic(cluster_prefix)
    master = _availability(master_status_topic(cluster_prefix))

    def total(key: str, name: str, template: str, **options: Any) -> Component:
        return _sensor(
            CLUSTER_KEY, key, name, summary, template, master, state_class="measurement", **options
        )

    return [
        total(
            "nodes_online", "Nodes online", _metric_template("online"), icon="mdi:server-network"
        ),
        total("cores_total", "Total cores", _metric_template("cores_total"), icon="mdi:cpu-64-bit"),
        total(
            "ram_total",
            "Total RAM",
            RAM_TOTAL_TEMPLATE,
            device_class="data_size",
            unit_of_measurement="GiB",
            suggested_display_precision=1,
        ),
        total(
            "cpu_percent_avg",
            "Average CPU",
            _metric_template("cpu_percent_avg"),
            unit_of_measurement="%",
            icon="mdi:cpu-64-bit",
            suggested_display_precision=1,
        ),
    ]


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, stable for equal inputs (so unchanged configs compare equal)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def device_message(
    prefix: str,
    device_object_id: str,
    device: Mapping[str, Any],
    origin: Mapping[str, Any],
    components: Sequence[Component],
) -> DiscoveryMessage:
    """One device-based discovery message holding every component under `cmps`."""
    payload = {
        "dev": dict(device),
        "o": dict(origin),
        "cmps": {c.key: {"p": c.platform, **c.config} for c in components},
    }
    return DiscoveryMessage(device_topic(prefix, device_object_id), encode(payload))


def entity_messages(
    prefix: str,
    device_object_id: str,
    device: Mapping[str, Any],
    origin: Mapping[str, Any],
    components: Sequence[Component],
) -> list[DiscoveryMessage]:
    """One per-entity discovery message per component (no `p`: it is device-form only)."""
    return [
        DiscoveryMessage(
            entity_topic(prefix, c.platform, device_object_id, c.key),
            encode({**c.config, "dev": dict(device), "o": dict(origin)}),
        )
        for c in components
    ]


def discovery_messages(
    prefix: str,
    device_object_id: str,
    device: Mapping[str, Any],
    origin: Mapping[str, Any],
    components: Sequence[Component],
    per_entity: bool,
) -> list[DiscoveryMessage]:
    """The messages announcing one device in the chosen form."""
    if per_entity:
        return entity_messages(prefix, device_object_id, device, origin, components)
    return [device_message(prefix, device_object_id, device, origin, components)]


def clear_messages(
    prefix: str,
    device_object_id: str,
    components: Iterable[Component],
    per_entity: bool | None = None,
) -> list[DiscoveryMessage]:
    """Empty retained payloads that remove a device; both forms when per_entity is None."""
    messages: list[DiscoveryMessage] = []
    if per_entity is not True:
        messages.append(DiscoveryMessage(device_topic(prefix, device_object_id), b""))
    if per_entity is not False:
        messages += [
            DiscoveryMessage(entity_topic(prefix, c.platform, device_object_id, c.key), b"")
            for c in components
        ]
    return messages
