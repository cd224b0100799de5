"""Raspberry Pi specifics: board model, core type, temperature and throttling, read via paths."""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from cluster_protocol.payloads import ThrottleFlags

logger = logging.getLogger(__name__)

DEVICE_TREE_MODEL: Final = Path("/proc/device-tree/model")
PROC_CPUINFO: Final = Path("/proc/cpuinfo")
THERMAL_ZONE_TEMP: Final = Path("/sys/class/thermal/thermal_zone0/temp")
VCGENCMD_TIMEOUT_S: Final = 2.0

# ARM (implementer 0x41) core names by `CPU part`; 64-bit Pi OS has no `model name` line.
ARM_CPU_PARTS: Final[Mapping[str, str]] = {
    "0xb76": "ARM1176",  # Pi 1, Zero
    "0xc07": "Cortex-A7",  # Pi 2
    "0xd03": "Cortex-A53",  # Pi 3, Zero 2
    "0xd08": "Cortex-A72",  # Pi 4, 400, CM4
    "0xd0b": "Cortex-A76",  # Pi 5
}

# psutil sensor names tried in order when the setting is "auto" (SoC first, then x86 boards).
AUTO_SENSORS: Final = ("cpu_thermal", "coretemp", "k10temp", "x86_pkg_temp", "acpitz")

# `vcgencmd get_throttled` bits: "now" in 0-3, "has occurred since boot" in 16-19.
THROTTLE_BITS: Final[Mapping[str, int]] = {
    "under_voltage": 0,
    "freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
OCCURRED_SHIFT: Final = 16

Runner = Callable[[Sequence[str]], str]
T = TypeVar("T")


def read_text(path: Path) -> str | None:
    """A file's text, or None when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_model(path: Path = DEVICE_TREE_MODEL) -> str | None:
    """The board model from the device tree (NUL-terminated), or None off a Pi."""
    text = read_text(path)
    if text is None:
        return None
    model = text.replace("\x00", "").strip()
    return model or None


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first value of each `key : value` line in /proc/cpuinfo."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip(), value.strip())
    return values


def cpu_name(cpuinfo_text: str) -> str | None:
    """A human name for the CPU: the ARM core from `CPU part`, else `model name`."""
    values = parse_cpuinfo(cpuinfo_text)
    part = values.get("CPU part", "").lower()
    if values.get("CPU implementer", "").lower() == "0x41" and part in ARM_CPU_PARTS:
        return ARM_CPU_PARTS[part]
    return values.get("model name") or values.get("Hardware") or None


def read_cpu_name(path: Path = PROC_CPUINFO) -> str | None:
    """`cpu_name` of the machine's /proc/cpuinfo, or None when it cannot be read."""
    text = read_text(path)
    return cpu_name(text) if text is not None else None


def read_temperature(
    # The psutil module or a test fake, duck-typed: only sensors_temperatures is used.
    ps: Any,
    sensor: str = "auto",
    thermal_zone: Path = THERMAL_ZONE_TEMP,
) -> float | None:
    """The CPU temperature in Celsius from the configured source; None when there is none.

    `sensor` is "auto", "none", a psutil sensor name, or a file path holding millidegrees.
    """
    if sensor == "none":
        return None
    if sensor.startswith("/"):
        return _read_millidegrees(Path(sensor))
    names = AUTO_SENSORS if sensor == "auto" else (sensor,)
    readings = _sensor_readings(ps)
    for name in names:
        for entry in readings.get(name, ()):
            current = getattr(entry, "current", None)
            if isinstance(current, int | float) and math.isfinite(current):
                return float(current)
    if sensor == "auto":
        return _read_millidegrees(thermal_zone)
    return None


def _sensor_readings(ps: Any) -> Mapping[str, Sequence[Any]]:
    # Not every platform has sensors_temperatures (macOS, Windows); that means "no reading".
    reader = getattr(ps, "sensors_temperatures", None)
    if reader is None:
        return {}
    try:
        readings = reader()
    except (OSError, RuntimeError) as error:
        logger.debug("sensors_temperatures failed: %s", error)
        return {}
    return readings if isinstance(readings, Mapping) else {}


def _read_millidegrees(path: Path) -> float | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip()) / 1000.0
    except ValueError:
        logger.debug("%s does not hold millidegrees: %r", path, text[:40])
        return None


def decode_throttled(text: str) -> ThrottleFlags | None:
    """Decode `throttled=0x50005` into named flags; None when the text is not that."""
    _, sep, raw = text.strip().partition("=")
    if not sep:
        return None
    try:
        bits = int(raw.strip(), 16)
    except ValueError:
        return None

    def flag(name: str, occurred: bool = False) -> bool:
        return bool(bits >> (THROTTLE_BITS[name] + (OCCURRED_SHIFT if occurred else 0)) & 1)

    # Spelled out key by key (not built in a loop) so mypy checks every key against the type.
    return ThrottleFlags(
        raw=raw.strip(),
        under_voltage=flag("under_voltage"),
        freq_capped=flag("freq_capped"),
        throttled=flag("throttled"),
        soft_temp_limit=flag("soft_temp_limit"),
        under_voltage_occurred=flag("under_voltage", occurred=True),
        freq_capped_occurred=flag("freq_capped", occurred=True),
        throttled_occurred=flag("throttled", occurred=True),
        soft_temp_limit_occurred=flag("soft_temp_limit", occurred=True),
    )


def decode_measure_clock(text: str) -> float | None:
    """Decode `frequency(48)=1500398464` (hertz) into MHz; None when the text is not that."""
    _, sep, raw = text.strip().partition("=")
    try:
        hertz = int(raw) if sep else 0
    except ValueError:
        return None
    return hertz / 1e6 if hertz > 0 else None


def run_command(argv: Sequence[str]) -> str:
    """Run a short command and return its stdout; raise OSError or CalledProcessError."""
    completed = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S, check=True
    )
    return completed.stdout


class VcgencmdReader(Generic[T]):
    """Runs one `vcgencmd` query and decodes it; remembers a missing vcgencmd (no retries)."""

    def __init__(
        self,
        args: Sequence[str],
        decode: Callable[[str], T | None],
        what: str,
        vcgencmd: str = "vcgencmd",
        run: Runner = run_command,
    ) -> None:
        self.vcgencmd = vcgencmd
        self.run = run
        self._argv = (vcgencmd, *args)
        self._decode = decode
        self._what = what
        self._missing = False
        self._warned = False

    def read(self) -> T | None:
        """The decoded answer, or None where vcgencmd is missing or refused."""
        if self._missing:
            return None
        try:
            output = self.run(self._argv)
        except FileNotFoundError:
            self._missing = True  # not a Pi (or not installed): stop spawning it
            return None
        except (OSError, subprocess.SubprocessError) as error:
            # Typically a node user outside the `video` group; say so once, not every sample.
            if not self._warned:
                logger.warning("cannot read %s with %s: %s", self._what, self.vcgencmd, error)
                self._warned = True
            return None
        return self._decode(output)


class ThrottleReader(VcgencmdReader[ThrottleFlags]):
    """Reads `vcgencmd get_throttled`."""

    def __init__(self, vcgencmd: str = "vcgencmd", run: Runner = run_command) -> None:
        super().__init__(("get_throttled",), decode_throttled, "throttling", vcgencmd, run)


class ArmClockReader(VcgencmdReader[float]):
    """Reads `vcgencmd measure_clock arm`: the clock the firmware runs, throttled or not."""

    def __init__(self, vcgencmd: str = "vcgencmd", run: Runner = run_command) -> None:
        super().__init__(
            ("measure_clock", "arm"), decode_measure_clock, "the ARM clock", vcgencmd, run
        )
