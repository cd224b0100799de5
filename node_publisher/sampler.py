"""What the node measures: metrics every interval, its machine details on a slower cadence."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, cast

import psutil

from cluster_protocol.payloads import MachineDetails, MetricsPayload
from node_publisher import collectors, pi
from node_publisher.collectors import PsutilLike, SampleContext
from node_publisher.machine_info import MachineInfo, MachinePaths, details_changed
from node_publisher.settings import PublisherSettings

logger = logging.getLogger(__name__)

DETAILS_CHECK_EVERY_S: Final = 60.0  # how often details are rebuilt to spot a change
PROC_MEMINFO: Final = Path("/proc/meminfo")


class Sampler:
    """Takes samples (thread-safe) and, once started, calls `tick` every `interval` seconds.

    Knows nothing of MQTT: the agent turns what it measures into envelopes.
    """

    def __init__(
        self,
        settings: PublisherSettings,
        ps: PsutilLike,
        machine_paths: MachinePaths | None = None,
        extra_details: Mapping[str, object] | None = None,
        details_check_every_s: float = DETAILS_CHECK_EVERY_S,
    ) -> None:
        self.details_check_every_s = details_check_every_s
        self._ps = ps
        linux_psutil = ps is psutil and sys.platform == "linux"
        self._ctx = SampleContext(
            temperature_sensor=settings.temperature_sensor,
            throttle=pi.ThrottleReader(settings.vcgencmd),
            # What psutil itself reads on Linux, read once where psutil reads it twice.
            meminfo=PROC_MEMINFO if linux_psutil else None,
            cpu_times=psutil.cpu_times if linux_psutil else None,
        )
        self._machine = MachineInfo(ps, settings.interval, machine_paths, tags=settings.tags)
        self._interval = settings.interval  # changed at run time by the set_interval command
        self._extra_details = dict(extra_details or {})
        self._lock = threading.Lock()  # the sample loop and the refresh command share ctx
        self._details: MachineDetails | None = None
        self._details_checked_at = time.monotonic()
        self._interval_changed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- measuring --------------------------------------------------------------------------

    def prime(self) -> None:
        """Take the first readings of counters (CPU, I/O), so the first sample has rates."""
        collectors.prime(self._ps, self._ctx)
        with self._lock:
            self._details = self._build_details(0.0)

    def measure(self) -> tuple[MetricsPayload, bool]:
        """One metrics payload, and whether the machine details changed (checked when due)."""
        with self._lock:
            metrics = collectors.collect_metrics(self._ps, self._ctx)
            now = time.monotonic()
            # Details (hostname, addresses, disks...) rarely change; rebuilding them every
            # sample was a sixth of the node's CPU per sample (bench/README.md).
            due = now - self._details_checked_at >= self.details_check_every_s
            if not due and self._details is not None:
                return metrics, False
            self._details_checked_at = now
            details = self._build_details(float(metrics.get("cpu_percent") or 0.0))
            changed = details_changed(self._details, details)
            self._details = details
            return metrics, changed

    @property
    def details(self) -> MachineDetails | None:
        """The machine details as last built (a copy)."""
        with self._lock:
            return None if self._details is None else {**self._details}

    def _build_details(self, cpu_percent: float) -> MachineDetails:
        details = self._machine.details(cpu_percent)
        details["interval_s"] = self._interval
        # The extras (commands, tasks) come from the command side as a plain mapping; it sends
        # only keys the contract documents (advertised_details), so the merge stays a
        # MachineDetails.
        return cast(MachineDetails, {**details, **self._extra_details})

    # -- the schedule -----------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between samples now (the configured value, or one set by command)."""
        return self._interval

    def set_interval(self, interval_s: float) -> None:
        """Sample every `interval_s` from now on; the details carry the new value."""
        if not interval_s > 0:
            raise ValueError(f"interval must be > 0, got {interval_s}")
        self._interval = float(interval_s)
        self._interval_changed.set()  # the loop restarts its schedule
        with self._lock:
            if self._details is not None:
                self._details = {**self._details, "interval_s": self._interval}

    def start(self, tick: Callable[[], object]) -> None:
        """Call `tick` every interval on a thread of its own until `stop`."""
        self._thread = threading.Thread(
            target=self._loop, args=(tick,), name="sampler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop, waiting for a sample in progress."""
        self._stopping.set()
        self._interval_changed.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self, tick: Callable[[], object]) -> None:
        interval = self._interval
        next_at = time.monotonic() + interval
        # Deadlines are start + k * interval, so slow samples do not make the schedule drift.
        while True:
            self._interval_changed.wait(max(0.0, next_at - time.monotonic()))
            if self._stopping.is_set():
                return
            if self._interval_changed.is_set():  # set_interval: a new schedule from now
                self._interval_changed.clear()
                interval = self._interval
                next_at = time.monotonic() + interval
                continue
            try:
                tick()
            except Exception:
                logger.exception("sample failed")
            next_at += interval
            behind = time.monotonic() - next_at
            if behind > 0:  # suspended or very slow: skip the missed ticks
                next_at += (int(behind // interval) + 1) * interval
