"""The payloads as Python types: one `TypedDict` per message type, for code on both sides.

`schemas.py` checks received JSON at run time; these types let mypy check the code that builds
and reads the same payloads. `tests/unit/test_payload_types.py` keeps both in step: every key
a schema documents is a key of its `TypedDict`, and the metrics keys are the metric table's.
Keys are optional (`total=False`) where a sender may leave them out, as the schemas allow.
"""

# No `from __future__ import annotations`: TypedDict needs real annotations at run time to
# tell `Required` keys apart (Python 3.11 reads `__required_keys__` from them).
from typing import Literal, Required, TypeAlias, TypedDict

JsonScalar: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = JsonScalar | list["JsonValue"] | dict[str, "JsonValue"]
"""Any value a JSON document can hold, as `json.loads` returns it."""

JsonObject: TypeAlias = dict[str, JsonValue]
"""A JSON object whose keys are not declared (command arguments, task results)."""


class MachineDetails(TypedDict, total=False):
    """`machine_details`: what a node is; retained, re-sent on connect and once a minute."""

    # The original design's five keys, required.
    hostname: Required[str]
    cpu_percent_used: Required[float]
    ram: Required[int]  # bytes
    cpu: Required[str]
    cpu_cores: Required[int]
    os: str
    kernel: str
    arch: str
    model: str | None
    boot_time: float
    disk_total_bytes: int
    ip_addresses: list[str]
    agent_version: str
    interval_s: float
    commands: list[str]
    tasks: list[str]
    tags: list[str]  # the node's own tags (its `tags` setting)


class Disk(TypedDict):
    """One mounted file system in `metrics.disks`."""

    mount: str
    total_bytes: int
    used_bytes: int
    percent: float


class ThrottleFlags(TypedDict, total=False):
    """`metrics.throttled` on a Raspberry Pi: `vcgencmd get_throttled` decoded."""

    raw: Required[str]  # the hex word, e.g. "0x50005"
    under_voltage: bool
    freq_capped: bool
    throttled: bool
    soft_temp_limit: bool
    under_voltage_occurred: bool
    freq_capped_occurred: bool
    throttled_occurred: bool
    soft_temp_limit_occurred: bool


class MetricsPayload(TypedDict, total=False):
    """`metrics`: one sample; the keys are `cluster_protocol.metrics.METRICS` (in_payload)."""

    cpu_percent: float
    cpu_percent_per_core: list[float]
    cpu_freq_mhz: float | None
    load_1: float | None
    load_5: float | None
    load_15: float | None
    memory_total_bytes: int
    memory_available_bytes: int
    memory_percent: float
    swap_percent: float | None
    disks: list[Disk]
    temperature_celsius: float | None
    net_rx_bytes_per_s: float | None
    net_tx_bytes_per_s: float | None
    disk_read_bytes_per_s: float | None
    disk_write_bytes_per_s: float | None
    uptime_s: float
    process_count: int | None
    throttled: ThrottleFlags | None
    spool_dropped: int


NodeLifecycle: TypeAlias = Literal["online", "offline"]


class StatusPayload(TypedDict):
    """`status`: the node's retained birth (`online`) and will or goodbye (`offline`)."""

    state: NodeLifecycle


class CommandPayload(TypedDict):
    """A command on `<prefix>/<node>/cmd/<name>`: a plain object, not an envelope."""

    id: str
    args: JsonObject
    expires: float


class ReplyPayload(TypedDict, total=False):
    """`reply`: a node's answer to one command, matched by `id`."""

    id: Required[str]
    ok: Required[bool]
    result: JsonValue
    error: str | None


class ClusterSummary(TypedDict):
    """The master's retained cluster summary (Home Assistant's cluster device) and the API's."""

    nodes_total: int
    online: int
    offline: int
    stale: int
    unknown: int
    cores_total: int
    ram_total_bytes: int
    cpu_percent_avg: float | None
    load_1_avg: float | None
