"""Node baseline: a bare loop reading the same psutil values as the publisher, every interval.

No MQTT, no JSON, no spool: what any Python monitor on the node pays at least. It reads the
mount table and the boot time every time, which the publisher re-reads once a minute.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import psutil


def read_once() -> list[Any]:
    """Every psutil value the publisher's collectors read."""
    values: list[Any] = [
        psutil.cpu_percent(interval=None),
        psutil.cpu_percent(interval=None, percpu=True),
        os.getloadavg(),
        psutil.virtual_memory(),
        psutil.swap_memory(),
        psutil.disk_io_counters(),
        psutil.net_io_counters(),
        psutil.boot_time(),
        len(psutil.pids()),
        psutil.cpu_freq(),  # the publisher reads it off a Pi (no vcgencmd)
    ]
    for partition in psutil.disk_partitions(all=False):
        values.append(psutil.disk_usage(partition.mountpoint))
    if hasattr(psutil, "sensors_temperatures"):
        values.append(psutil.sensors_temperatures())
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Read every interval until killed, on a drift-free schedule like the publisher's."""
    parser = argparse.ArgumentParser(prog="python -m bench.node_baseline")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    next_at = time.monotonic()
    while True:
        read_once()
        next_at += args.interval
        time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    raise SystemExit(main())
