"""The metric table: every metric declared once, with what each consumer needs to show it.

The payload schema (`METRICS_FIELDS`), the master's history columns and their migrations,
the Prometheus exposition, the Home Assistant discovery entities and the dashboard's list
(`GET /api/catalog/metrics`) are all derived from `METRICS`. Adding a metric means adding
one `Metric` here and a collector on the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal


@dataclass(frozen=True, slots=True)
class PrometheusExport:
    """How `/metrics` exports a metric: one per-node gauge or counter, labelled `node`."""

    name: str  # full family name, base units in the name (Prometheus naming guide)
    help: str
    scale: float = 1.0  # exported value = payload value * scale (percent -> ratio: 0.01)
    type: Literal["gauge", "counter"] = "gauge"


@dataclass(frozen=True, slots=True)
class HomeAssistantSensor:
    """How Home Assistant discovery shows a metric (the entity's options, in HA's terms)."""

    name: str
    unit: str | None = None  # unit_of_measurement
    device_class: str | None = None
    icon: str | None = None
    state_class: str | None = "measurement"
    precision: int | None = None  # suggested_display_precision
    platform: Literal["sensor", "binary_sensor"] = "sensor"


@dataclass(frozen=True, slots=True)
class DashboardField:
    """How the web dashboard shows a metric."""

    label: str
    format: str  # the name of a formatter in web/static/format.js: percent, rate, celsius, ...
    card: bool = False  # shown on the node's card on the overview
    chart: str | None = None  # title of the node-page chart it is drawn in (history only)
    series: str | None = None  # its name in that chart's legend (default: label)
    y_min: float | None = None
    y_max: float | None = None


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its payload key and JSON type, unit, meaning, and where it is shown."""

    key: str
    json_type: str  # as in the payload schemas: "number|null"
    unit: str | None
    description: str
    # The history schema version that added its column; None: not kept in history.
    history_since: int | None = None
    prometheus: PrometheusExport | None = None
    home_assistant: HomeAssistantSensor | None = None
    dashboard: DashboardField | None = None
    # False for a value the master derives from other payload keys (see `metric_value`).
    in_payload: bool = True

    @property
    def history(self) -> bool:
        """True when the master keeps this metric in history (one column each)."""
        return self.history_since is not None


METRICS: Final[tuple[Metric, ...]] = (
    Metric(
        "cpu_percent",
        "number",
        "%",
        "CPU in use across all cores",
        history_since=1,
        prometheus=PrometheusExport("picluster_node_cpu_usage_ratio", "CPU in use, 0-1", 0.01),
        home_assistant=HomeAssistantSensor("CPU", "%", icon="mdi:cpu-64-bit", precision=1),
        dashboard=DashboardField("CPU", "percent", card=True, chart="CPU", y_min=0.0, y_max=100.0),
    ),
    Metric("cpu_percent_per_core", "array", "%", "CPU in use, per core"),
    Metric(
        "load_1",
        "number|null",
        None,
        "Load average over 1 minute",
        history_since=1,
        prometheus=PrometheusExport("picluster_node_load1", "Load average over 1 minute"),
        home_assistant=HomeAssistantSensor("Load (1 min)", icon="mdi:gauge", precision=2),
        dashboard=DashboardField("Load (1 min)", "load"),
    ),
    Metric(
        "load_5",
        "number|null",
        None,
        "Load average over 5 minutes",
        prometheus=PrometheusExport("picluster_node_load5", "Load average over 5 minutes"),
        dashboard=DashboardField("Load (5 min)", "load"),
    ),
    Metric(
        "load_15",
        "number|null",
        None,
        "Load average over 15 minutes",
        prometheus=PrometheusExport("picluster_node_load15", "Load average over 15 minutes"),
        dashboard=DashboardField("Load (15 min)", "load"),
    ),
    Metric("memory_total_bytes", "integer", "B", "Memory installed"),
    Metric("memory_available_bytes", "integer", "B", "Memory available to new programs"),
    Metric(
        "memory_percent",
        "number",
        "%",
        "Memory in use",
        history_since=1,
        prometheus=PrometheusExport(
            "picluster_node_memory_usage_ratio", "Memory in use, 0-1", 0.01
        ),
        home_assistant=HomeAssistantSensor("Memory", "%", icon="mdi:memory", precision=1),
        dashboard=DashboardField(
            "Memory", "percent", card=True, chart="Memory", y_min=0.0, y_max=100.0
        ),
    ),
    Metric(
        "swap_percent",
        "number|null",
        "%",
        "Swap in use (null without swap)",
        history_since=1,
        prometheus=PrometheusExport("picluster_node_swap_usage_ratio", "Swap in use, 0-1", 0.01),
        home_assistant=HomeAssistantSensor("Swap", "%", icon="mdi:swap-horizontal", precision=1),
        dashboard=DashboardField("Swap used", "percent"),
    ),
    # A list of {"mount", "total_bytes", "used_bytes", "percent"}. /metrics exports it as
    # picluster_node_filesystem_usage_ratio{mount}; Home Assistant gets one sensor per mount
    # ("Disk <mount>") with these options.
    Metric(
        "disks",
        "array",
        "%",
        "Mounted file systems and the share of each in use",
        home_assistant=HomeAssistantSensor("Disk", "%", icon="mdi:harddisk", precision=1),
    ),
    Metric(
        "root_disk_percent",
        "number|null",
        "%",
        "Share of the file system mounted at / in use",
        history_since=1,
        dashboard=DashboardField("Disk /", "percent", card=True),
        in_payload=False,
    ),
    Metric(
        "temperature_celsius",
        "number|null",
        "°C",
        "SoC/CPU temperature (null without a sensor)",
        history_since=1,
        prometheus=PrometheusExport("picluster_node_temperature_celsius", "SoC/CPU temperature"),
        home_assistant=HomeAssistantSensor(
            "Temperature", "°C", device_class="temperature", precision=1
        ),
        dashboard=DashboardField("Temperature", "celsius", card=True, chart="Temperature"),
    ),
    Metric(
        "net_rx_bytes_per_s",
        "number|null",
        "B/s",
        "Network bytes received per second, all interfaces but loopback",
        history_since=1,
        prometheus=PrometheusExport(
            "picluster_node_network_receive_bytes_per_second", "Network bytes received/s"
        ),
        home_assistant=HomeAssistantSensor(
            "Network receive", "B/s", device_class="data_rate", precision=0
        ),
        dashboard=DashboardField(
            "Network received", "rate", chart="Network", series="Received", y_min=0.0
        ),
    ),
    Metric(
        "net_tx_bytes_per_s",
        "number|null",
        "B/s",
        "Network bytes sent per second, all interfaces but loopback",
        history_since=1,
        prometheus=PrometheusExport(
            "picluster_node_network_transmit_bytes_per_second", "Network bytes sent/s"
        ),
        home_assistant=HomeAssistantSensor(
            "Network send", "B/s", device_class="data_rate", precision=0
        ),
        dashboard=DashboardField("Network sent", "rate", chart="Network", series="Sent"),
    ),
    Metric(
        "disk_read_bytes_per_s",
        "number|null",
        "B/s",
        "Disk bytes read per second, all disks",
        history_since=1,
        prometheus=PrometheusExport(
            "picluster_node_disk_read_bytes_per_second", "Disk bytes read/s"
        ),
    ),
    Metric(
        "disk_write_bytes_per_s",
        "number|null",
        "B/s",
        "Disk bytes written per second, all disks",
        history_since=1,
        prometheus=PrometheusExport(
            "picluster_node_disk_write_bytes_per_second", "Disk bytes written/s"
        ),
    ),
    Metric(
        "uptime_s",
        "number",
        "s",
        "Seconds since the node booted",
        prometheus=PrometheusExport(
            "picluster_node_uptime_seconds", "Seconds since the node booted"
        ),
        dashboard=DashboardField("Uptime", "duration", card=True),
    ),
    Metric(
        "process_count",
        "integer|null",
        None,
        "Processes running",
        dashboard=DashboardField("Processes", "count"),
    ),
    Metric(
        "cpu_freq_mhz",
        "number|null",
        "MHz",
        "Current CPU clock (on a Pi the firmware's ARM clock, which drops when it throttles)",
        history_since=2,
        prometheus=PrometheusExport(
            "picluster_node_cpu_frequency_hertz", "Current CPU clock in hertz", 1e6
        ),
        home_assistant=HomeAssistantSensor(
            "CPU clock", "MHz", device_class="frequency", icon="mdi:speedometer", precision=0
        ),
        dashboard=DashboardField("CPU clock", "mhz", chart="CPU clock", y_min=0.0),
    ),
    # Pi only: {"raw", "under_voltage", "freq_capped", "throttled", "soft_temp_limit", and
    # each "*_occurred" since boot}. Home Assistant shows one problem binary sensor, ON while
    # any "now" flag is set.
    Metric(
        "throttled",
        "object|null",
        None,
        "Raspberry Pi firmware throttling flags (vcgencmd get_throttled)",
        home_assistant=HomeAssistantSensor(
            "Throttling", device_class="problem", state_class=None, platform="binary_sensor"
        ),
    ),
    Metric(
        "spool_dropped", "integer", None, "Envelopes the node's spool dropped since last report"
    ),
)
"""Every metric, in the order consumers list them."""

_BY_KEY: Final[Mapping[str, Metric]] = {m.key: m for m in METRICS}

HISTORY_METRICS: Final[tuple[str, ...]] = tuple(m.key for m in METRICS if m.history)
"""Keys of the metrics kept in history (one column each), in declaration order."""


def metric(key: str) -> Metric:
    """The metric with this key; KeyError when there is none."""
    return _BY_KEY[key]


def metric_value(m: Metric, payload: Mapping[str, Any]) -> Any:
    """The metric's value in a metrics payload (derived ones computed), None when absent."""
    if m.key == "root_disk_percent":
        return root_disk_percent(payload)
    return payload.get(m.key)


def root_disk_percent(payload: Mapping[str, Any]) -> float | None:
    """Percent used of the disk mounted at '/', if the payload has it."""
    disks = payload.get("disks")
    for disk in disks if isinstance(disks, list) else ():
        if isinstance(disk, dict) and disk.get("mount") == "/":
            percent = disk.get("percent")
            return float(percent) if isinstance(percent, int | float) else None
    return None
