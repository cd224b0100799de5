"""Slow-changing readings (mount table, boot time) are re-read at most once a minute."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from node_publisher import collectors
from node_publisher.collectors import SLOW_READINGS_TTL_S, SampleContext

Part = namedtuple("Part", "device mountpoint fstype")
Usage = namedtuple("Usage", "total used percent")


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingPs:
    """Counts the reads a Pi Zero pays for."""

    def __init__(self) -> None:
        self.partitions = [Part("/dev/mmcblk0p2", "/", "ext4")]
        self.boot = 1_000.0
        self.partition_reads = 0
        self.boot_reads = 0

    def disk_partitions(self, all: bool = False) -> list[Any]:
        self.partition_reads += 1
        return list(self.partitions)

    def disk_usage(self, path: str) -> Usage:
        return Usage(32_000_000_000, 8_000_000_000, 25.0)

    def boot_time(self) -> float:
        self.boot_reads += 1
        return self.boot


def mounts(ps: CountingPs, ctx: SampleContext) -> list[str]:
    return [disk["mount"] for disk in collectors.collect_disks(ps, ctx)["disks"]]  # type: ignore[arg-type]


def test_a_new_usb_disk_shows_within_a_minute_with_one_mount_table_read_per_minute() -> None:
    ps, clock = CountingPs(), Clock()
    ctx = SampleContext(monotonic=clock, wall=Clock(5_000.0))
    assert mounts(ps, ctx) == ["/"]
    ps.partitions.append(Part("/dev/sda1", "/mnt/usb", "vfat"))
    for second in range(1, 60):
        clock.now = float(second)
        assert mounts(ps, ctx) == ["/"]
    clock.now = SLOW_READINGS_TTL_S
    assert mounts(ps, ctx) == ["/", "/mnt/usb"]
    assert ps.partition_reads == 2


def test_uptime_follows_a_boot_time_moved_by_ntp_within_a_minute() -> None:
    ps, clock, wall = CountingPs(), Clock(), Clock(5_000.0)
    ctx = SampleContext(monotonic=clock, wall=wall)
    assert collectors.collect_uptime(ps, ctx) == {"uptime_s": 4_000.0}  # type: ignore[arg-type]
    ps.boot = 4_500.0  # the clock was set: the kernel's boot time moves with it
    clock.now = 30.0
    assert collectors.collect_uptime(ps, ctx) == {"uptime_s": 4_000.0}  # type: ignore[arg-type]
    clock.now = 61.0
    assert collectors.collect_uptime(ps, ctx) == {"uptime_s": 500.0}  # type: ignore[arg-type]
    assert ps.boot_reads == 2
