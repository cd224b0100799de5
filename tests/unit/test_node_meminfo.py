"""RAM and swap from one read of /proc/meminfo: psutil's values, at a quarter of the cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from node_publisher import collectors
from node_publisher.collectors import SampleContext

# A Raspberry Pi 4 (4 GB) with a 100 MiB swap file, as /proc/meminfo shows it (abridged).
PI4_MEMINFO = """\
MemTotal:        3884328 kB
MemFree:         2817364 kB
MemAvailable:    3435048 kB
Buffers:           40112 kB
Cached:           652552 kB
SwapCached:            0 kB
Active:           392344 kB
SwapTotal:        102396 kB
SwapFree:          92156 kB
Dirty:                20 kB
"""


class VMem(NamedTuple):
    total: int
    available: int
    percent: float


class Swap(NamedTuple):
    total: int
    percent: float


class PsWithoutMeminfo:
    """What the collector falls back to when the file lacks a line."""

    def virtual_memory(self) -> VMem:
        return VMem(total=1000, available=250, percent=75.0)

    def swap_memory(self) -> Swap:
        return Swap(total=0, percent=0.0)


def collect(tmp_path: Path, text: str) -> Any:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(text)
    ps: Any = PsWithoutMeminfo()  # only the two methods the fallback calls
    return collectors.collect_memory(ps, SampleContext(meminfo=meminfo))


def test_values_and_rounding_are_psutil_s(tmp_path):
    assert collect(tmp_path, PI4_MEMINFO) == {
        "memory_total_bytes": 3884328 * 1024,
        "memory_available_bytes": 3435048 * 1024,
        "memory_percent": 11.6,  # (total - available) / total, one decimal
        "swap_percent": 10.0,  # (102396 - 92156) / 102396
    }


def test_no_swap_is_none(tmp_path):
    text = PI4_MEMINFO.replace("102396", "0").replace("92156", "0")
    assert collect(tmp_path, text)["swap_percent"] is None


@pytest.mark.parametrize("missing", ["MemAvailable", "SwapFree"])
def test_a_kernel_without_a_line_gets_psutil_s_answer(tmp_path, missing):
    text = "".join(line + "\n" for line in PI4_MEMINFO.splitlines() if missing not in line)
    assert collect(tmp_path, text) == {
        "memory_total_bytes": 1000,
        "memory_available_bytes": 250,
        "memory_percent": 75.0,
        "swap_percent": None,
    }


def test_an_unreadable_file_falls_back_to_psutil(tmp_path):
    ps: Any = PsWithoutMeminfo()
    ctx = SampleContext(meminfo=tmp_path / "absent")
    assert collectors.collect_memory(ps, ctx)["memory_percent"] == 75.0


def test_on_this_machine_it_agrees_with_psutil():
    direct = collectors.collect_memory(psutil, SampleContext(meminfo=Path("/proc/meminfo")))
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    assert direct["memory_total_bytes"] == memory.total
    assert direct["memory_percent"] == pytest.approx(memory.percent, abs=1.0)  # moments apart
    assert (direct["swap_percent"] is None) == (swap.total == 0)
