"""Alert rule evaluation per metrics sample: the engine at 10,000 nodes against bare reads.

`AlertEngine.metrics` with the 8 built-in rules and 12 custom thresholds over a `ClusterState`
of 10,000 online nodes, fed Pi-like payloads round-robin at the pace of one sample per node
every 10 s (the clock moves 1 ms per sample). Baseline, in the same run: the same loop doing
only `payload.get` of 20 metric keys. Steady state (everything below its threshold) and,
separately, the first samples of every node with everything above (the firing path: alerts,
events and notifications composed). See bench/README.md, "Alerts".
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from bench import wire
from bench.sections import Row
from bench.stats import ratio
from cluster_protocol.payloads import MachineDetails
from master_service.alerts.engine import AlertEngine
from master_service.alerts.rules import BUILTIN_RULES, Rule, Severity
from master_service.state import ClusterState

ENGINE_NODES: Final = 10_000
ENGINE_TARGET_US: Final = 10.0
SAMPLE_STEP_S: Final = 0.001  # 10,000 nodes every 10 s: one sample per millisecond
PAYLOAD_VARIANTS: Final = 997  # prime: node i does not always get the same payload
RACKS: Final = 10

# Twelve custom thresholds over the numeric metrics, some limited to nodes by glob: with the
# 8 built-ins, 20 rules (node_offline and data_loss read no metric; rebooted reads uptime_s).
CUSTOM_RULES: Final = (
    Rule(name="cpu_busy", metric="cpu_percent", above=90.0, for_s=300.0),
    Rule(name="cpu_busy_rack0", metric="cpu_percent", above=75.0, for_s=60.0, nodes=("rack0-*",)),
    Rule(name="load_high", metric="load_1", above=8.0, for_s=120.0),
    Rule(name="load5_high", metric="load_5", above=6.0, for_s=300.0),
    Rule(name="swap_used", metric="swap_percent", above=50.0, for_s=600.0),
    Rule(name="root_disk", metric="root_disk_percent", above=85.0, for_s=300.0),
    Rule(
        name="hot_rack1",
        metric="temperature_celsius",
        above=70.0,
        for_s=60.0,
        nodes=("rack1-*", "rack2-*"),
    ),
    Rule(
        name="memory_low",
        metric="memory_available_bytes",
        below=200e6,
        clear_above=300e6,
        severity=Severity.CRITICAL,
    ),
    Rule(name="net_rx_high", metric="net_rx_bytes_per_s", above=100e6, for_s=60.0),
    Rule(name="disk_writes", metric="disk_write_bytes_per_s", above=50e6, for_s=120.0),
    Rule(name="processes", metric="process_count", above=800.0, nodes=("rack[3-5]-*",)),
    Rule(name="spool_drops", metric="spool_dropped", above=0.0),
)

# What the loop touches in the baseline: every key a rule reads, then more payload keys up to
# 20 (20 rules, 20 values; what a bare "look at each value once" costs).
BASELINE_KEYS: Final = (
    "throttled",  # under_voltage, throttled
    "temperature_celsius",
    "disks",  # disk_full, root_disk
    "memory_percent",
    "uptime_s",  # rebooted
    "cpu_percent",
    "load_1",
    "load_5",
    "swap_percent",
    "memory_available_bytes",
    "net_rx_bytes_per_s",
    "disk_write_bytes_per_s",
    "process_count",
    "spool_dropped",
    "load_15",
    "memory_total_bytes",
    "net_tx_bytes_per_s",
    "disk_read_bytes_per_s",
    "cpu_percent_per_core",
    "cpu_freq_mhz",
)


def rules() -> tuple[Rule, ...]:
    """The 20 rules: built-ins with their defaults, then the custom thresholds."""
    return (*BUILTIN_RULES.values(), *CUSTOM_RULES)


def node_ids(count: int) -> list[str]:
    """Node names spread over racks, so that the rules' globs match some of them."""
    per_rack = -(-count // RACKS)
    return [f"rack{i // per_rack}-pi{i % per_rack:04d}" for i in range(count)]


def payload(index: int, hot: bool, uptime_s: float) -> dict[str, Any]:
    """A Pi 4's metrics sample, varied by `index`; every value above its limit when `hot`."""
    k = index % 37
    cpu = 99.0 if hot else 5.0 + k * 1.5
    return {
        "cpu_percent": cpu,
        "cpu_percent_per_core": [cpu, cpu + 1.0, cpu - 1.0, cpu],
        "load_1": 12.0 if hot else 0.2 + k * 0.05,
        "load_5": 10.0 if hot else 0.3 + k * 0.04,
        "load_15": 0.3 + k * 0.03,
        "memory_total_bytes": 4_025_409_536,
        "memory_available_bytes": 90_000_000 if hot else 3_120_562_176 - k * 10_000_000,
        "memory_percent": 97.5 if hot else 22.5 + k * 0.5,
        "swap_percent": 80.0 if hot else 0.0,
        "disks": [
            {
                "mount": "/",
                "total_bytes": 31_254_278_144,
                "used_bytes": 5_112_365_056,
                "percent": 95.0 if hot else 17.2 + k * 0.3,
            },
            {
                "mount": "/boot/firmware",
                "total_bytes": 535_805_952,
                "used_bytes": 63_963_136,
                "percent": 12.6,
            },
        ],
        "disk_read_bytes_per_s": 2048.0 + k,
        "disk_write_bytes_per_s": 90e6 if hot else 18_432.7 + k * 100,
        "net_rx_bytes_per_s": 150e6 if hot else 1532.25 + k * 10,
        "net_tx_bytes_per_s": 2210.5 + k * 10,
        "temperature_celsius": 85.0 if hot else 41.0 + k * 0.3,
        "cpu_freq_mhz": 1800.0,
        "uptime_s": uptime_s,
        "process_count": 900 if hot else 130 + k,
        "throttled": (
            {"raw": "0x50005", "under_voltage": True, "throttled": True, "freq_capped": False}
            if hot
            else {"raw": "0x0", "under_voltage": False, "throttled": False}
        ),
        "spool_dropped": 3 if hot else 0,
    }


@dataclass
class Clock:
    """The engine's clock, moved by the loop (one sample per millisecond)."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def cluster(nodes: Sequence[str], clock: Clock) -> ClusterState:
    """10,000 nodes that said online and were heard just now, sampling every 10 s."""
    state = ClusterState(clock)
    for node in nodes:
        facts = state.node(node)
        facts.status = "online"
        facts.state_since = facts.last_heard = clock.now
        facts.details = cast(MachineDetails, wire.details_payload(node, 10.0))
    return state


@dataclass
class Loop:
    """One way of handling a sample, timed over rounds of every node."""

    name: str
    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    samples: int = 0


def _timed_round(
    handle: Callable[[str, Mapping[str, Any], float], object],
    nodes: Sequence[str],
    state: ClusterState,
    payloads: Sequence[Mapping[str, Any]],
    clock: Clock,
    start_index: int,
) -> tuple[float, float]:
    """One sample from every node, as the ingest would hand them over; (cpu s, wall s)."""
    get = state.get
    count = len(payloads)
    now = clock.now
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for offset, node in enumerate(nodes):
        now += SAMPLE_STEP_S
        facts = get(node)
        facts.last_heard = now  # type: ignore[union-attr]  # what the metrics handler does
        handle(node, payloads[(start_index + offset) % count], now)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    clock.now = now
    return cpu, wall


def engine_cost(rounds: int, repeats: int) -> tuple[dict[str, Any], list[Row]]:
    """Per-sample cost of the 20 rules at 10,000 nodes, against touching the 20 values."""
    nodes = node_ids(ENGINE_NODES)
    clock = Clock()
    state = cluster(nodes, clock)
    engine = AlertEngine(rules(), state, clock, link_base="http://127.0.0.1:8080/")
    uptime = 86_400.0
    steady = [payload(i, False, uptime) for i in range(PAYLOAD_VARIANTS)]
    keys = BASELINE_KEYS

    def bare(_node: str, sample: Mapping[str, Any], _now: float) -> object:
        get = sample.get
        return [get(key) for key in keys]

    def evaluate(node: str, sample: Mapping[str, Any], now: float) -> object:
        return engine.metrics(node, sample, now)

    loops = {"engine": Loop("engine"), "baseline": Loop("baseline")}
    handlers = {"engine": evaluate, "baseline": bare}
    # One untimed round: the engine learns each node (rule list per node, liveness timer).
    _timed_round(evaluate, nodes, state, steady, clock, 0)
    engine.due(clock.now)
    index = len(nodes)
    due_s: list[float] = []
    changes_seen = 0
    for _repeat in range(repeats):
        for name in ("baseline", "engine"):  # interleaved, so drift hits both alike
            loop = loops[name]
            for _round in range(rounds):
                cpu, wall = _timed_round(handlers[name], nodes, state, steady, clock, index)
                index += len(nodes)
                loop.cpu_s.append(cpu)
                loop.wall_s.append(wall)
                loop.samples += len(nodes)
                # The timer thread's share (nodes' liveness re-armed), outside the sample cost.
                started = time.perf_counter()
                changes_seen += bool(engine.due(clock.now))
                due_s.append(time.perf_counter() - started)
    per_sample = {
        name: {
            "cpu_us": sum(loop.cpu_s) / loop.samples * 1e6,
            "wall_us": sum(loop.wall_s) / loop.samples * 1e6,
            "wall_us_best_round": min(loop.wall_s) / len(nodes) * 1e6,
            "samples": loop.samples,
        }
        for name, loop in loops.items()
    }
    still_firing = len(engine.firing())  # steady payloads are below every limit: 0
    firing = _firing_path(nodes)
    engine_us = per_sample["engine"]["cpu_us"]
    base_us = per_sample["baseline"]["cpu_us"]
    figures: dict[str, Any] = {
        "nodes": len(nodes),
        "rules": len(rules()),
        "per_sample": per_sample,
        "engine_vs_baseline_cpu": ratio(engine_us, base_us),
        "engine_vs_baseline_wall": ratio(
            per_sample["engine"]["wall_us"], per_sample["baseline"]["wall_us"]
        ),
        "due_ms_per_round_median": statistics.median(due_s) * 1e3 if due_s else None,
        "steady_rounds_with_changes": changes_seen,
        "steady_alerts_firing": still_firing,
        "firing": firing,
    }
    section = f"alerts: rule evaluation, {len(rules())} rules, {len(nodes):,} nodes"
    cpu_ratio = figures["engine_vs_baseline_cpu"]
    rows = [
        Row(
            section,
            "engine.metrics per sample, steady (CPU / wall)",
            f"{engine_us:.1f} us / {per_sample['engine']['wall_us']:.1f} us",
            f"20 x payload.get {base_us:.2f} us / {per_sample['baseline']['wall_us']:.2f} us",
            f"<= {ENGINE_TARGET_US:.0f} us",
            f"{_fmt(cpu_ratio, '.0f')} x, {'met' if engine_us <= ENGINE_TARGET_US else 'MISSED'}",
        ),
        Row(
            section,
            "  firing path: first sample, all above (CPU)",
            f"{firing['cpu_us']:.1f} us",
            f"{firing['events_per_sample']:.1f} events, "
            f"{firing['notifications_per_sample']:.1f} notifications per sample",
        ),
        Row(
            section,
            "  second sample, all still above (CPU)",
            f"{firing['again_cpu_us']:.1f} us",
        ),
        Row(
            section,
            "  alerts firing after the steady rounds",
            f"{still_firing}",
            "",
            "0",
            "met" if still_firing == 0 else "MISSED",
        ),
        Row(
            section,
            "  engine.due per 10,000 samples (timer thread)",
            f"{figures['due_ms_per_round_median']:.1f} ms",
        ),
    ]
    progress(f"alerts engine: {engine_us:.1f} us per sample (baseline {base_us:.2f} us)")
    return figures, rows


def _firing_path(nodes: Sequence[str]) -> dict[str, Any]:
    """A fresh engine; each node's first sample has every value above its limit."""
    clock = Clock()
    state = cluster(nodes, clock)
    engine = AlertEngine(rules(), state, clock, link_base="http://127.0.0.1:8080/")
    steady = [payload(i, False, 86_400.0) for i in range(PAYLOAD_VARIANTS)]
    _timed_round(engine.metrics, nodes, state, steady, clock, 0)  # learn the nodes, quietly
    hot = [payload(i, True, 86_500.0) for i in range(PAYLOAD_VARIANTS)]
    totals = {"events": 0, "notifications": 0}

    def evaluate(node: str, sample: Mapping[str, Any], now: float) -> object:
        changes = engine.metrics(node, sample, now)
        totals["events"] += len(changes.events)
        totals["notifications"] += sum(1 for e in changes.events if e.notification is not None)
        return changes

    cpu, wall = _timed_round(evaluate, nodes, state, hot, clock, 0)
    counted = dict(totals)
    again_cpu, _ = _timed_round(engine.metrics, nodes, state, hot, clock, 0)
    return {
        "cpu_us": cpu / len(nodes) * 1e6,
        "wall_us": wall / len(nodes) * 1e6,
        "events_per_sample": counted["events"] / len(nodes),
        "notifications_per_sample": counted["notifications"] / len(nodes),
        "again_cpu_us": again_cpu / len(nodes) * 1e6,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def progress(text: str) -> None:
    """A progress line on stderr, as the other sections print them."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()
