"""Overall and per-core CPU use from one read of the per-core times, with psutil's arithmetic."""

from __future__ import annotations

from typing import Any, NamedTuple

import psutil

from node_publisher import collectors
from node_publisher.collectors import SampleContext


class CpuTimes(NamedTuple):  # psutil's scputimes on Linux
    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float
    guest: float
    guest_nice: float


def times(**fields: float) -> CpuTimes:
    return CpuTimes(**{name: fields.get(name, 0.0) for name in CpuTimes._fields})


class Readings:
    """Hands out one list of per-core times per call, like psutil.cpu_times(percpu=True)."""

    def __init__(self, *readings: list[CpuTimes]) -> None:
        self.readings = list(readings)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> list[CpuTimes]:
        self.calls.append(kwargs)
        return self.readings.pop(0)


def test_psutil_s_formula_per_core_and_overall_from_one_read():
    first = [times(user=10, system=5, idle=80, iowait=5), times(user=0, idle=0)]
    # Core 1's guest time is already in its user time (Linux): not counted twice.
    second = [times(user=20, system=10, idle=160, iowait=10), times(user=50, guest=10, idle=50)]
    readings = Readings(first, second)
    ctx = SampleContext(cpu_times=readings)
    ps: Any = None  # not asked: both figures come from ctx.cpu_times
    assert collectors.collect_cpu(ps, ctx) == {
        "cpu_percent": 0.0,
        "cpu_percent_per_core": [0.0, 0.0],
    }
    assert collectors.collect_cpu(ps, ctx) == {
        "cpu_percent": 32.5,  # (15 + 50) / (100 + 100)
        "cpu_percent_per_core": [15.0, 50.0],  # busy = total - idle - iowait
    }
    assert readings.calls == [{"percpu": True}, {"percpu": True}]  # one read per sample


def test_a_counter_that_went_back_counts_as_zero_and_an_idle_interval_as_zero():
    ctx = SampleContext(
        cpu_times=Readings(
            [times(user=50, idle=50)], [times(user=40, idle=60)], [times(user=40, idle=60)]
        )
    )
    ps: Any = None
    collectors.collect_cpu(ps, ctx)
    assert collectors.collect_cpu(ps, ctx)["cpu_percent_per_core"] == [0.0]  # 0 busy of 10
    assert collectors.collect_cpu(ps, ctx)["cpu_percent"] == 0.0  # nothing elapsed


def test_a_core_coming_online_restarts_the_rates():
    ctx = SampleContext(cpu_times=Readings([times(idle=1)], [times(idle=2), times(idle=2)]))
    ps: Any = None
    collectors.collect_cpu(ps, ctx)
    assert collectors.collect_cpu(ps, ctx)["cpu_percent_per_core"] == [0.0, 0.0]


def test_on_this_machine_the_figures_are_percentages_for_every_core():
    ctx = SampleContext(cpu_times=psutil.cpu_times)
    collectors.collect_cpu(psutil, ctx)
    sum(i * i for i in range(200_000))  # some CPU use in between
    figures = collectors.collect_cpu(psutil, ctx)
    assert len(figures["cpu_percent_per_core"]) == psutil.cpu_count()
    assert all(0.0 <= value <= 100.0 for value in figures["cpu_percent_per_core"])
    assert 0.0 <= figures["cpu_percent"] <= 100.0
