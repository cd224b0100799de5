"""Metric collectors: small functions of an injected psutil-like object, run from one table."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from cluster_protocol.payloads import Disk, MetricsPayload
from node_publisher import pi

logger = logging.getLogger(__name__)

# Pseudo file systems that are not disks a user cares about (snap images, for one).
IGNORED_FSTYPES: Final = frozenset({"squashfs", "iso9660"})
# The mount table and the boot time rarely change; reading them costs a Pi Zero more than most
# collectors, so they are read again at most this often (a new USB disk shows within a minute).
SLOW_READINGS_TTL_S: Final = 60.0

T = TypeVar("T")


class PsutilLike(Protocol):
    """The part of psutil the collectors use; the psutil module itself satisfies it."""

    # The results stay `Any`: the object is the injected psutil module or a test fake, and
    # psutil's own results are named tuples per platform; the payload types check what the
    # collectors make of them.

    @property
    def cpu_percent(self) -> Callable[..., Any]:
        """`cpu_percent(interval=None, percpu=False) -> float | list[float]`."""
        ...

    @property
    def cpu_count(self) -> Callable[..., Any]:
        """`cpu_count(logical=True) -> int | None`."""
        ...

    @property
    def virtual_memory(self) -> Callable[..., Any]:
        """`virtual_memory() -> .total, .available, .percent`."""
        ...

    @property
    def swap_memory(self) -> Callable[..., Any]:
        """`swap_memory() -> .total, .percent`."""
        ...

    @property
    def disk_partitions(self) -> Callable[..., Any]:
        """`disk_partitions(all=False) -> [.mountpoint, .fstype]`."""
        ...

    @property
    def disk_usage(self) -> Callable[..., Any]:
        """`disk_usage(path) -> .total, .used, .percent`."""
        ...

    @property
    def disk_io_counters(self) -> Callable[..., Any]:
        """`disk_io_counters() -> .read_bytes, .write_bytes, or None`."""
        ...

    @property
    def net_io_counters(self) -> Callable[..., Any]:
        """`net_io_counters() -> .bytes_recv, .bytes_sent`."""
        ...

    @property
    def net_if_addrs(self) -> Callable[..., Any]:
        """`net_if_addrs() -> {nic: [.family, .address]}`."""
        ...

    @property
    def boot_time(self) -> Callable[..., Any]:
        """`boot_time() -> Unix seconds`."""
        ...

    @property
    def pids(self) -> Callable[..., Any]:
        """`pids() -> list of process ids`."""
        ...


@dataclass
class SampleContext:
    """What collectors share between samples: clocks, counters for rates, Pi sources."""

    temperature_sensor: str = "auto"
    thermal_zone: Path = pi.THERMAL_ZONE_TEMP
    throttle: pi.ThrottleReader = field(default_factory=pi.ThrottleReader)
    arm_clock: pi.ArmClockReader | None = None  # default: the throttle reader's vcgencmd
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    # name -> (monotonic time, counter values) of the previous sample, for rates
    previous: dict[str, tuple[float, tuple[float, ...]]] = field(default_factory=dict)
    # name -> (monotonic time read, value) of slow-changing readings
    cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    # when "auto" last found no temperature source at all (None: it found one, or not yet)
    no_temperature_at: float | None = None
    # /proc/meminfo, read directly when the agent runs the real psutil on Linux (None: ask ps)
    meminfo: Path | None = None
    # psutil.cpu_times on Linux: both CPU figures from one read of /proc/stat (None: ask ps)
    cpu_times: Callable[..., Any] | None = None
    # per-core times of the previous sample, for cpu_times
    previous_cpu: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.arm_clock is None:
            self.arm_clock = pi.ArmClockReader(self.throttle.vcgencmd, self.throttle.run)

    def cached(self, name: str, read: Callable[[], T], ttl_s: float = SLOW_READINGS_TTL_S) -> T:
        """`read()`, called again only once its last value is `ttl_s` seconds old."""
        now = self.monotonic()
        hit = self.cache.get(name)
        if hit is not None and 0 <= now - hit[0] < ttl_s:
            return hit[1]  # type: ignore[no-any-return]
        value = read()
        self.cache[name] = (now, value)
        return value

    def rates(self, name: str, counters: tuple[float, ...]) -> tuple[float | None, ...]:
        """Per-second rates since the previous call for `name`; None on the first or a reset."""
        now = self.monotonic()
        before = self.previous.get(name)
        self.previous[name] = (now, counters)
        if before is None:
            return tuple(None for _ in counters)
        elapsed = now - before[0]
        if elapsed <= 0:
            return tuple(None for _ in counters)
        # A counter that went backwards was reset (reboot of a NIC, wrap): no honest rate.
        return tuple(
            (value - old) / elapsed if value >= old else None
            for value, old in zip(counters, before[1], strict=True)
        )


# A collector returns the part of the metrics payload it measures (MetricsPayload is total=False).
Collector = Callable[[PsutilLike, SampleContext], MetricsPayload]


def collect_cpu(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """CPU use since the previous call, overall and per core; never blocks."""
    if ctx.cpu_times is not None:
        return _cpu_from_times(ctx, ctx.cpu_times)
    return {
        "cpu_percent": ps.cpu_percent(interval=None),
        "cpu_percent_per_core": list(ps.cpu_percent(interval=None, percpu=True)),
    }


def _cpu_from_times(ctx: SampleContext, cpu_times: Callable[..., Any]) -> MetricsPayload:
    """Both cpu_percent figures from one per-core read (psutil reads /proc/stat for each).

    psutil's arithmetic (`cpu_percent`): per field deltas floored at 0, total without the
    guest times Linux already counts in user and nice, busy = total - idle - iowait, one
    decimal. The overall figure sums the cores' deltas, as the kernel's "cpu" line does.
    """
    now = tuple(cpu_times(percpu=True))
    before, ctx.previous_cpu = ctx.previous_cpu, now
    if before is None or len(before) != len(now):  # first call, or a core came or went
        return {"cpu_percent": 0.0, "cpu_percent_per_core": [0.0] * len(now)}
    per_core: list[float] = []
    busy_sum = total_sum = 0.0
    for old, new in zip(before, now, strict=True):
        deltas = [max(0.0, b - a) for a, b in zip(old, new, strict=True)]
        fields = dict(zip(new._fields, deltas, strict=True))
        total = sum(deltas) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
        busy = total - fields["idle"] - fields.get("iowait", 0.0)
        per_core.append(_busy_percent(busy, total))
        busy_sum += busy
        total_sum += total
    return {"cpu_percent": _busy_percent(busy_sum, total_sum), "cpu_percent_per_core": per_core}


def _busy_percent(busy: float, total: float) -> float:
    return round(busy / total * 100, 1) if total else 0.0


def collect_load(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Load averages over 1, 5 and 15 minutes; None where the platform has none."""
    getloadavg = getattr(ps, "getloadavg", None)
    if getloadavg is None:
        return {"load_1": None, "load_5": None, "load_15": None}
    load_1, load_5, load_15 = getloadavg()
    return {"load_1": load_1, "load_5": load_5, "load_15": load_15}


def collect_memory(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """RAM total, available and percent used, and swap percent used (None without swap)."""
    if ctx.meminfo is not None:
        values = read_meminfo(ctx.meminfo)
        if values is not None:
            return values
    memory = ps.virtual_memory()
    swap = ps.swap_memory()
    return {
        "memory_total_bytes": int(memory.total),
        "memory_available_bytes": int(memory.available),
        "memory_percent": memory.percent,
        "swap_percent": swap.percent if swap.total else None,
    }


def read_meminfo(path: Path) -> MetricsPayload | None:
    """The memory metrics from one read of /proc/meminfo; None if a line is missing.

    The values and formulas of psutil's `virtual_memory()` and `swap_memory()` on Linux, which
    read the same file twice and /proc/vmstat besides (swap in/out, not sent): 0.2 ms a sample.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            text = handle.read()
    except OSError:
        return None
    kib = {key: int(value) for key, value in _MEMINFO_LINE.findall(text)}
    if len(kib) < _MEMINFO_KEYS:
        return None  # a kernel without MemAvailable: psutil estimates it
    total = kib[b"MemTotal"] * 1024
    available = kib[b"MemAvailable"] * 1024
    swap_total = kib[b"SwapTotal"] * 1024
    swap_used = swap_total - kib[b"SwapFree"] * 1024
    return {
        "memory_total_bytes": total,
        "memory_available_bytes": available,
        "memory_percent": _usage_percent(total - available, total),
        "swap_percent": _usage_percent(swap_used, swap_total) if swap_total else None,
    }


_MEMINFO_LINE: Final = re.compile(rb"^(MemTotal|MemAvailable|SwapTotal|SwapFree):\s+(\d+)", re.M)
_MEMINFO_KEYS: Final = 4


def _usage_percent(used: int, total: int) -> float:
    # psutil's usage_percent(used, total, round_=1)
    return round(used / total * 100, 1) if total else 0.0


def collect_disks(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Size and use of each mounted file system, one entry per mount point."""
    disks: list[Disk] = []
    seen: set[str] = set()
    for partition in ctx.cached("partitions", lambda: list(ps.disk_partitions(all=False))):
        if partition.mountpoint in seen or partition.fstype in IGNORED_FSTYPES:
            continue
        seen.add(partition.mountpoint)
        try:
            usage = ps.disk_usage(partition.mountpoint)
        except OSError as error:  # unplugged USB drive, no permission
            logger.debug("skipping %s: %s", partition.mountpoint, error)
            continue
        disks.append(
            Disk(
                mount=partition.mountpoint,
                total_bytes=int(usage.total),
                used_bytes=int(usage.used),
                percent=usage.percent,
            )
        )
    return {"disks": disks}


def collect_disk_io(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Bytes read and written per second since the previous sample, all disks together."""
    counters = ps.disk_io_counters()
    if counters is None:  # no disks psutil can see (some containers)
        return {"disk_read_bytes_per_s": None, "disk_write_bytes_per_s": None}
    read, write = ctx.rates("disk_io", (counters.read_bytes, counters.write_bytes))
    return {"disk_read_bytes_per_s": read, "disk_write_bytes_per_s": write}


def collect_net(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Bytes received and sent per second since the previous sample, all interfaces."""
    counters = ps.net_io_counters()
    if counters is None:
        return {"net_rx_bytes_per_s": None, "net_tx_bytes_per_s": None}
    rx, tx = ctx.rates("net_io", (counters.bytes_recv, counters.bytes_sent))
    return {"net_rx_bytes_per_s": rx, "net_tx_bytes_per_s": tx}


def collect_temperature(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """CPU temperature from the configured sensor; None where the machine has none."""
    auto = ctx.temperature_sensor == "auto"
    # No sensor anywhere (VMs, containers): psutil's search of every hwmon directory costs as
    # much as a collector, so look again once a minute, like the mount table.
    missing_at = ctx.no_temperature_at
    if auto and missing_at is not None and 0 <= ctx.monotonic() - missing_at < SLOW_READINGS_TTL_S:
        return {"temperature_celsius": None}
    celsius = pi.read_temperature(ps, ctx.temperature_sensor, ctx.thermal_zone)
    if auto:
        ctx.no_temperature_at = ctx.monotonic() if celsius is None else None
    return {"temperature_celsius": celsius}


def collect_uptime(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Seconds since boot."""
    # Re-read now and then: a Pi without a clock battery moves its boot time at the NTP sync.
    return {"uptime_s": max(0.0, ctx.wall() - ctx.cached("boot_time", ps.boot_time))}


def collect_processes(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Number of processes; counts PIDs only (enumerating processes costs a Pi Zero 20 %)."""
    return {"process_count": len(ps.pids())}


def collect_throttled(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Raspberry Pi under-voltage and throttling flags; None off a Pi."""
    return {"throttled": ctx.throttle.read()}


def collect_cpu_freq(ps: PsutilLike, ctx: SampleContext) -> MetricsPayload:
    """Current CPU clock in MHz: the firmware's on a Pi, else psutil's; None where unknown."""
    # On a Pi the kernel's cpufreq figure stays at the requested clock while the firmware
    # throttles (heat, under-voltage): only vcgencmd shows the drop.
    mhz = ctx.arm_clock.read() if ctx.arm_clock is not None else None
    cpu_freq = getattr(ps, "cpu_freq", None)
    if mhz is None and cpu_freq is not None:
        try:
            current = getattr(cpu_freq(), "current", None)
        except (NotImplementedError, OSError):  # no cpufreq and no "cpu MHz" in /proc/cpuinfo
            current = None
        if isinstance(current, int | float) and current > 0:
            mhz = float(current)
    return {"cpu_freq_mhz": mhz}


COLLECTORS: Final[Mapping[str, Collector]] = {
    "cpu": collect_cpu,
    "load": collect_load,
    "memory": collect_memory,
    "disks": collect_disks,
    "disk_io": collect_disk_io,
    "net": collect_net,
    "temperature": collect_temperature,
    "uptime": collect_uptime,
    "processes": collect_processes,
    "cpu_freq": collect_cpu_freq,
    "throttled": collect_throttled,
}


def finite_or_none(value: Any) -> Any:
    """Replace NaN and infinities (which JSON cannot carry) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def prime(ps: PsutilLike, ctx: SampleContext) -> None:
    """Start the CPU and rate counters so the first real sample measures an interval."""
    collect_cpu(ps, ctx)
    for name in ("disk_io", "net"):
        try:
            COLLECTORS[name](ps, ctx)
        except Exception:
            logger.debug("priming %s failed", name, exc_info=True)


def collect_metrics(
    ps: PsutilLike, ctx: SampleContext, collectors: Mapping[str, Collector] = COLLECTORS
) -> MetricsPayload:
    """Run every collector; one that fails is logged and its keys left out."""
    metrics: MetricsPayload = {}
    for name, collector in collectors.items():
        try:
            metrics.update(collector(ps, ctx))
        except Exception:
            logger.exception("collector %s failed", name)
    # Same keys, with NaN and infinities (a broken sensor) as None: JSON cannot carry them.
    cleaned: MetricsPayload = finite_or_none(metrics)
    return cleaned
