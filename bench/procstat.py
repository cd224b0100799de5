"""CPU time and memory of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self", *, reaped_children: bool = False) -> float:
    """User + system CPU seconds the process (and, if asked, its reaped children) used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:  # cutime + cstime: children that exited and were waited for
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def rss_kib(pid: int | str = "self") -> int:
    """Resident memory in KiB."""
    return memory_kib(pid)["VmRSS"]


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of each live Python thread of this process, by thread name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        try:
            text = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[thread.name] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out
