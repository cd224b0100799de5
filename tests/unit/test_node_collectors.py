"""Collectors against a fake psutil made of NamedTuples (Telegraf MockPS style)."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any, NamedTuple

from cluster_protocol import METRICS_FIELDS, validate_payload
from cluster_protocol.payloads import MetricsPayload
from node_publisher import collectors, pi
from node_publisher.collectors import SampleContext

BOARDS = Path(__file__).parents[1] / "fixtures" / "node"


class VMem(NamedTuple):
    total: int
    available: int
    percent: float


class Swap(NamedTuple):
    total: int
    percent: float


class Part(NamedTuple):
    device: str
    mountpoint: str
    fstype: str


class Usage(NamedTuple):
    total: int
    used: int
    percent: float


class DiskIO(NamedTuple):
    read_bytes: int
    write_bytes: int


class NetIO(NamedTuple):
    bytes_sent: int
    bytes_recv: int


class Temp(NamedTuple):
    label: str
    current: float


class Addr(NamedTuple):
    family: int
    address: str


class FakePs:
    """Returns fixed values; counters can be advanced between samples."""

    def __init__(self) -> None:
        self.cpu_calls: list[Any] = []
        self.disk = DiskIO(1000, 2000)
        self.net = NetIO(bytes_sent=500, bytes_recv=100)
        self.temps: dict[str, list[Temp]] = {"cpu_thermal": [Temp("", 47.2)]}
        self.partitions = [Part("/dev/sda1", "/", "ext4"), Part("/dev/sdb1", "/mnt/usb", "vfat")]
        self.pid_list = [1, 2, 3]

    def cpu_percent(self, interval: float | None = None, percpu: bool = False) -> Any:
        self.cpu_calls.append(interval)
        return [10.0, 30.0] if percpu else 20.0

    def cpu_count(self, logical: bool = True) -> int:
        return 4

    def getloadavg(self) -> tuple[float, float, float]:
        return (0.5, 0.25, 0.125)

    def virtual_memory(self) -> VMem:
        return VMem(total=4_000_000_000, available=3_000_000_000, percent=25.0)

    def swap_memory(self) -> Swap:
        return Swap(total=100, percent=1.5)

    def disk_partitions(self, all: bool = False) -> list[Part]:
        return self.partitions

    def disk_usage(self, path: str) -> Usage:
        if path == "/mnt/gone":
            raise OSError("unplugged")
        return Usage(total=32_000_000_000, used=8_000_000_000, percent=25.0)

    def disk_io_counters(self) -> DiskIO | None:
        return self.disk

    def net_io_counters(self) -> NetIO | None:
        return self.net

    def net_if_addrs(self) -> dict[str, list[Addr]]:
        return {
            "lo": [Addr(socket.AF_INET, "127.0.0.1")],
            "eth0": [Addr(socket.AF_INET, "192.168.1.20"), Addr(socket.AF_INET6, "fe80::1%eth0")],
        }

    def boot_time(self) -> float:
        return 1_000.0

    def pids(self) -> list[int]:
        return self.pid_list

    def sensors_temperatures(self) -> dict[str, list[Temp]]:
        return self.temps

    def process_iter(self) -> Any:
        raise AssertionError("collectors must never enumerate processes")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NoThrottle:
    def read(self) -> None:
        return None


class ArmClock:
    """Stands in for `vcgencmd measure_clock arm`: MHz, or None off a Pi."""

    def __init__(self, mhz: float | None = None) -> None:
        self.mhz = mhz

    def read(self) -> float | None:
        return self.mhz


class CpuFreq(NamedTuple):
    current: float
    min: float
    max: float


def make_ctx(**overrides: Any) -> SampleContext:
    values: dict[str, Any] = {
        "monotonic": Clock(),
        "wall": Clock(5_000.0),
        "throttle": NoThrottle(),
        "arm_clock": ArmClock(),
        "thermal_zone": Path("/nonexistent/temp"),
    }
    values.update(overrides)
    return SampleContext(**values)


def test_cpu_never_blocks_and_reports_overall_and_per_core():
    ps = FakePs()
    assert collectors.collect_cpu(ps, make_ctx()) == {
        "cpu_percent": 20.0,
        "cpu_percent_per_core": [10.0, 30.0],
    }
    assert ps.cpu_calls == [None, None]  # interval=None: no 1 s sleep per sample


def test_load_average_and_its_absence():
    assert collectors.collect_load(FakePs(), make_ctx()) == {
        "load_1": 0.5,
        "load_5": 0.25,
        "load_15": 0.125,
    }

    class NoLoad(FakePs):
        getloadavg = None  # type: ignore[assignment]

    assert collectors.collect_load(NoLoad(), make_ctx()) == {
        "load_1": None,
        "load_5": None,
        "load_15": None,
    }


def test_memory_in_bytes_and_swap_none_without_swap():
    ps = FakePs()
    assert collectors.collect_memory(ps, make_ctx()) == {
        "memory_total_bytes": 4_000_000_000,
        "memory_available_bytes": 3_000_000_000,
        "memory_percent": 25.0,
        "swap_percent": 1.5,
    }
    ps.swap_memory = lambda: Swap(total=0, percent=0.0)  # type: ignore[method-assign]
    assert collectors.collect_memory(ps, make_ctx())["swap_percent"] is None


def test_disks_one_entry_per_mount_skipping_unreadable_and_snaps():
    ps = FakePs()
    ps.partitions = [
        Part("/dev/sda1", "/", "ext4"),
        Part("/dev/sda1", "/", "ext4"),  # bind mount listed twice
        Part("/dev/loop0", "/snap/core", "squashfs"),
        Part("/dev/sdc1", "/mnt/gone", "ext4"),
        Part("/dev/sdb1", "/mnt/usb", "vfat"),
    ]
    disks = collectors.collect_disks(ps, make_ctx())["disks"]
    assert [d["mount"] for d in disks] == ["/", "/mnt/usb"]
    assert disks[0] == {
        "mount": "/",
        "total_bytes": 32_000_000_000,
        "used_bytes": 8_000_000_000,
        "percent": 25.0,
    }


def test_disk_and_net_rates_come_from_counter_deltas():
    ps = FakePs()
    clock = Clock(100.0)
    ctx = make_ctx(monotonic=clock)
    first = {**collectors.collect_disk_io(ps, ctx), **collectors.collect_net(ps, ctx)}
    assert set(first.values()) == {None}  # nothing to compare with yet
    clock.now = 110.0
    ps.disk = DiskIO(read_bytes=1000 + 10_240, write_bytes=2000 + 5_120)
    ps.net = NetIO(bytes_sent=500 + 1_000, bytes_recv=100 + 20_000)
    assert collectors.collect_disk_io(ps, ctx) == {
        "disk_read_bytes_per_s": 1024.0,
        "disk_write_bytes_per_s": 512.0,
    }
    assert collectors.collect_net(ps, ctx) == {
        "net_rx_bytes_per_s": 2000.0,
        "net_tx_bytes_per_s": 100.0,
    }


def test_a_counter_reset_gives_no_rate_instead_of_a_negative_one():
    ps = FakePs()
    clock = Clock(100.0)
    ctx = make_ctx(monotonic=clock)
    collectors.collect_net(ps, ctx)
    clock.now = 110.0
    ps.net = NetIO(bytes_sent=10, bytes_recv=5_000)
    assert collectors.collect_net(ps, ctx) == {
        "net_rx_bytes_per_s": 490.0,
        "net_tx_bytes_per_s": None,
    }


def test_disk_io_none_where_psutil_sees_no_disks():
    ps = FakePs()
    ps.disk = None  # type: ignore[assignment]
    assert collectors.collect_disk_io(ps, make_ctx()) == {
        "disk_read_bytes_per_s": None,
        "disk_write_bytes_per_s": None,
    }


def test_temperature_from_psutil_and_none_when_absent():
    ps = FakePs()
    assert collectors.collect_temperature(ps, make_ctx()) == {"temperature_celsius": 47.2}
    ps.temps = {}
    assert collectors.collect_temperature(ps, make_ctx()) == {"temperature_celsius": None}


def test_uptime_and_process_count_without_enumerating_processes():
    ps = FakePs()
    ctx = make_ctx()
    assert collectors.collect_uptime(ps, ctx) == {"uptime_s": 4_000.0}
    assert collectors.collect_processes(ps, ctx) == {"process_count": 3}


def test_throttled_comes_from_the_reader():
    class Reader:
        def read(self) -> dict[str, Any]:
            return {"raw": "0x0"}

    ctx = make_ctx(throttle=Reader())
    assert collectors.collect_throttled(FakePs(), ctx) == {"throttled": {"raw": "0x0"}}


def test_cpu_clock_from_psutil_off_a_pi():
    ps = FakePs()
    ps.cpu_freq = lambda: CpuFreq(current=1800.0, min=600.0, max=1800.0)  # type: ignore[attr-defined]
    assert collectors.collect_cpu_freq(ps, make_ctx()) == {"cpu_freq_mhz": 1800.0}


def test_cpu_clock_on_a_pi_is_the_firmware_clock_which_drops_when_throttled():
    ps = FakePs()
    ps.cpu_freq = lambda: CpuFreq(current=1500.0, min=600.0, max=1500.0)  # type: ignore[attr-defined]
    throttled = (BOARDS / "pi4-arm64" / "vcgencmd_measure_clock_arm").read_text()
    reader = pi.ArmClockReader("vcgencmd", lambda argv: throttled)

    assert collectors.collect_cpu_freq(ps, make_ctx(arm_clock=reader)) == {"cpu_freq_mhz": 600.0}


def test_cpu_clock_is_null_where_nothing_knows_it():
    ps = FakePs()  # psutil without cpu_freq (some platforms)
    assert collectors.collect_cpu_freq(ps, make_ctx()) == {"cpu_freq_mhz": None}

    def unknown() -> None:
        raise NotImplementedError("can't find current frequency file")

    ps.cpu_freq = unknown  # type: ignore[attr-defined]
    assert collectors.collect_cpu_freq(ps, make_ctx()) == {"cpu_freq_mhz": None}
    ps.cpu_freq = lambda: None  # type: ignore[attr-defined]
    assert collectors.collect_cpu_freq(ps, make_ctx()) == {"cpu_freq_mhz": None}
    reader = pi.ArmClockReader("vcgencmd", lambda argv: 'error=1 error_msg="bad"\n')
    assert collectors.collect_cpu_freq(ps, make_ctx(arm_clock=reader)) == {"cpu_freq_mhz": None}


def test_every_collected_key_is_documented_and_valid():
    metrics = collectors.collect_metrics(FakePs(), make_ctx())
    metrics["spool_dropped"] = 0
    assert set(metrics) == set(METRICS_FIELDS)
    validate_payload("metrics", metrics)


def test_a_failing_collector_is_left_out_and_the_rest_still_run(caplog):
    def broken(ps: Any, ctx: SampleContext) -> MetricsPayload:
        raise RuntimeError("sensor exploded")

    table = {"broken": broken, "memory": collectors.collect_memory}
    metrics = collectors.collect_metrics(FakePs(), make_ctx(), table)
    assert metrics["memory_percent"] == 25.0
    assert "collector broken failed" in caplog.text


def test_non_finite_floats_become_null():
    ps = FakePs()
    ps.cpu_percent = lambda interval=None, percpu=False: (  # type: ignore[method-assign]
        [math.nan, 1.0] if percpu else math.inf
    )
    metrics = collectors.collect_metrics(ps, make_ctx(), {"cpu": collectors.collect_cpu})
    assert metrics == {"cpu_percent": None, "cpu_percent_per_core": [None, 1.0]}
