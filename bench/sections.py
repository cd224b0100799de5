"""The bench sections: master ingest against baselines, latency at a fixed load, scale, history."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import wire
from bench.harness import CONSUMERS, RunResult, run_load
from bench.loadgen import Plan
from bench.stats import median, percentile, ratio
from cluster_protocol import HISTORY_METRICS

INGEST_NODES: Final = 100
LATENCY_RATE: Final = 5000.0
LATENCY_NODES: Final = 500
SCALE_NODES: Final = 10_000
SCALE_INTERVAL_S: Final = 10.0
LATENCY_WARMUP_S: Final = 2.0  # leave out the first seconds (births, connection set-up)
# Issue 14's targets.
VS_PAHO_TARGET: Final = 1.5
VS_SUB_TARGET: Final = 0.5
LATENCY_P99_TARGET_S: Final = 0.100
# Netdata's sizing guide for parents: metrics ingest takes 2 CPU cores per million samples
# received per second (https://learn.netdata.cloud/docs/netdata-agent/resource-utilization/cpu).
NETDATA_SAMPLES_PER_CORE_S: Final = 500_000


def numeric_values(value: Any) -> int:
    """How many numbers (one sample each, as Netdata counts) a JSON value holds."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return 1
    if isinstance(value, dict):
        return sum(numeric_values(item) for item in value.values())
    if isinstance(value, list):
        return sum(numeric_values(item) for item in value)
    return 0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the printed table."""

    section: str
    figure: str
    value: str
    baseline: str = ""
    target: str = ""
    verdict: str = ""


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _steady_latencies(master: dict[str, Any], after: float) -> list[float]:
    return [
        latency
        for at, latency in zip(master["committed_at"], master["latency_s"], strict=True)
        if at - latency >= after
    ]


def _run_summary(result: RunResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "consumer": result.consumer,
        "messages": result.plan.total,
        "received": result.received - 1,
        "complete": result.complete,
        "rate_msg_s": result.rate,
        "cpu_s": result.cpu_s,
        "cpu_us_per_msg": (
            result.cpu_s / result.plan.total * 1e6 if result.cpu_s is not None else None
        ),
        "generator_s": result.generator.get("t_acked", 0) - result.generator.get("t_start", 0),
    }
    if result.master is not None:
        master = result.master
        latencies = master["latency_s"]
        summary.update(
            latency_p50_s=percentile(latencies, 0.50),
            latency_p99_s=percentile(latencies, 0.99),
            rss_done_kib=master["rss_done_kib"],
            hwm_kib=master["hwm_kib"],
            counters=master["counters"],
            thread_cpu_us_per_msg={
                name: seconds / result.plan.total * 1e6
                for name, seconds in master.get("thread_cpu_s", {}).items()
                if seconds > 0
            },
        )
    return summary


def ingest_plan(messages: int) -> Plan:
    """100 nodes announce themselves, then send `messages` metrics envelopes flat out."""
    return Plan(
        nodes=INGEST_NODES,
        metrics=messages,
        rate=0.0,
        births=True,
        birth_rate=0.0,
        interval_s=1.0,
    )


def ingest(workdir: Path, messages: int, repeats: int) -> tuple[dict[str, Any], list[Row]]:
    """The same flat-out load against the master, a counting paho client and mosquitto_sub."""
    plan = ingest_plan(messages)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CONSUMERS}
    for repeat in range(repeats):
        for kind in CONSUMERS:  # interleaved, so drift on the machine hits all three alike
            result = run_load(kind, plan, workdir / f"ingest-{kind}-{repeat}")
            runs[kind].append(_run_summary(result))
            _progress(f"ingest {kind} #{repeat + 1}: {_fmt(result.rate, ',.0f')} msg/s")
    rates = {kind: median([r["rate_msg_s"] for r in runs[kind]]) for kind in CONSUMERS}
    master_runs = runs["master"]
    p50 = median([r.get("latency_p50_s") for r in master_runs])
    p99 = median([r.get("latency_p99_s") for r in master_runs])
    rss = median([r.get("rss_done_kib") for r in master_runs])
    cpu = {kind: median([r["cpu_us_per_msg"] for r in runs[kind]]) for kind in CONSUMERS}
    threads = _median_threads([r.get("thread_cpu_us_per_msg", {}) for r in master_runs])
    vs_paho = ratio(rates["master"], rates["paho"])
    vs_sub = ratio(rates["master"], rates["mosquitto_sub"])
    before_vs_paho = ratio(rates["master-paho"], rates["paho"])
    paho_vs_sub = ratio(rates["paho"], rates["mosquitto_sub"])
    # Samples per second per core: the numbers in each envelope over the master's CPU time
    # per envelope, as Netdata counts samples (one numeric value = one sample).
    received_values = numeric_values(wire.METRICS_PAYLOAD)
    stored_values = len(HISTORY_METRICS)
    per_core = None if not cpu["master"] else received_values * 1e6 / cpu["master"]
    stored_per_core = None if not cpu["master"] else stored_values * 1e6 / cpu["master"]
    figures: dict[str, Any] = {
        "plan": {"nodes": plan.nodes, "messages": plan.total, "qos": 1, "repeats": repeats},
        "rate_msg_s": rates,
        "cpu_us_per_msg": cpu,
        "master_vs_paho": vs_paho,
        "master_vs_mosquitto_sub": vs_sub,
        "master_paho_receive_vs_paho": before_vs_paho,
        "paho_vs_mosquitto_sub": paho_vs_sub,
        "samples_per_core_s": per_core,
        "stored_samples_per_core_s": stored_per_core,
        "master_latency_p50_s": p50,
        "master_latency_p99_s": p99,
        "master_rss_kib": rss,
        "master_thread_cpu_us_per_msg": threads,
        "runs": runs,
    }
    section = f"ingest, QoS 1, {plan.nodes} nodes, {plan.total:,} msgs, median of {repeats}"
    rows = [
        Row(
            section,
            "master (mqtt5 receive, history on) msg/s",
            _fmt(rates["master"], ",.0f"),
            f"paho counter {_fmt(rates['paho'], ',.0f')}",
            f">= {VS_PAHO_TARGET} x paho",
            f"{_fmt(vs_paho, '.2f')} x, "
            f"{_verdict(None if vs_paho is None else vs_paho >= VS_PAHO_TARGET)}",
        ),
        Row(
            section,
            "master vs mosquitto_sub",
            f"{_fmt(vs_sub, '.2f')} x",
            f"mosquitto_sub {_fmt(rates['mosquitto_sub'], ',.0f')}",
            f">= {VS_SUB_TARGET} x sub",
            _verdict(None if vs_sub is None else vs_sub >= VS_SUB_TARGET),
        ),
        Row(
            section,
            "  before: master, paho receive, msg/s",
            _fmt(rates["master-paho"], ",.0f"),
            "",
            "",
            f"{_fmt(before_vs_paho, '.2f')} x paho",
        ),
        Row(
            section,
            "bare paho counter msg/s",
            _fmt(rates["paho"], ",.0f"),
            "",
            "",
            f"{_fmt(paho_vs_sub, '.2f')} x sub",
        ),
        Row(
            section,
            "CPU per message (master / before / paho / sub)",
            " / ".join(_fmt(cpu[k], ".0f", " us") for k in CONSUMERS),
        ),
        Row(
            section,
            "  master CPU by thread",
            ", ".join(f"{_short(name)} {us:.0f} us" for name, us in threads.items()),
        ),
        Row(
            section,
            f"samples/s per core ({received_values} numbers per envelope)",
            _fmt(per_core, ",.0f"),
            f"Netdata parent ~{NETDATA_SAMPLES_PER_CORE_S:,}",
            "",
            f"{_fmt(ratio(per_core, NETDATA_SAMPLES_PER_CORE_S), '.2f')} x",
        ),
        Row(
            section,
            # Netdata stores every sample it receives; the master keeps all of them as the
            # node's latest metrics, and only these in its history.
            f"  of which stored as history columns ({stored_values})",
            _fmt(stored_per_core, ",.0f"),
            "",
            "",
            f"{_fmt(ratio(stored_per_core, NETDATA_SAMPLES_PER_CORE_S), '.2f')} x",
        ),
        Row(
            section,
            "master latency p50 / p99 at saturation",
            f"{_fmt(p50, '.2f', ' s')} / {_fmt(p99, '.2f', ' s')}",
            "",
            "(queueing: offered load > capacity)",
        ),
        Row(
            section,
            "master RSS after the run",
            _fmt(None if rss is None else rss / 1024, ".1f", " MiB"),
        ),
    ]
    return figures, rows


def _median_threads(runs: list[dict[str, float]]) -> dict[str, float]:
    names = sorted(
        {name for run in runs for name in run}, key=lambda n: -max(run.get(n, 0.0) for run in runs)
    )
    medians = {name: median([run.get(name) for run in runs]) for name in names}
    return {name: value for name, value in medians.items() if value is not None and value >= 1}


def _short(thread_name: str) -> str:
    if thread_name.startswith("paho"):
        return "paho network"
    return thread_name.removeprefix("picluster-")


def latency_plan(rate: float, duration_s: float) -> Plan:
    """500 nodes offering `rate` metrics envelopes/s for `duration_s`, paced by the generator."""
    return Plan(
        nodes=LATENCY_NODES,
        metrics=int(rate * duration_s),
        rate=rate,
        births=True,
        birth_rate=rate / 2,
        interval_s=LATENCY_NODES / rate,
    )


def latency_figures(result: RunResult) -> dict[str, Any]:
    """Latency node ts -> committed of one paced master run, the first seconds left out."""
    assert result.master is not None
    plan = result.plan
    after = result.generator["t_metrics_start"] + LATENCY_WARMUP_S
    latencies = _steady_latencies(result.master, after)
    received = result.master.get("receive_latency_s", [])
    achieved = plan.metrics / (result.generator["t_sent"] - result.generator["t_metrics_start"])
    return {
        "offered_msg_s": plan.rate,
        "achieved_offer_msg_s": achieved,
        "complete": result.complete,
        "samples": len(latencies),
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies) if latencies else None,
        "receive_p50_s": percentile(received, 0.5),
        "receive_p99_s": percentile(received, 0.99),
        "master_thread_cpu_s": result.master.get("thread_cpu_s"),
        "master_cpu_s": result.cpu_s,
        "master_cpu_share": _share(result.cpu_s, plan, result),
        "master_rss_kib": result.master["rss_done_kib"],
    }


def latency(workdir: Path, duration_s: float) -> tuple[dict[str, Any], list[Row]]:
    """End-to-end latency (node ts -> committed) at a fixed 5,000 msg/s."""
    result = run_load("master", latency_plan(LATENCY_RATE, duration_s), workdir / "latency")
    figures = latency_figures(result)
    p50, p99, worst = figures["p50_s"], figures["p99_s"], figures["max_s"]
    r50, r99 = figures["receive_p50_s"], figures["receive_p99_s"]
    _progress(f"latency at {LATENCY_RATE:,.0f} msg/s: p99 {_fmt(p99, '.3f', ' s')}")
    section = (
        f"latency, {LATENCY_RATE:,.0f} msg/s offered for {duration_s:.0f} s, node ts -> committed"
    )
    ok = None if p99 is None else (p99 < LATENCY_P99_TARGET_S and result.complete)
    rows = [
        Row(
            section,
            "p50 / p99 / max",
            " / ".join(_fmt(v, ".0f", " ms") for v in (_ms(p50), _ms(p99), _ms(worst))),
            "",
            f"p99 < {LATENCY_P99_TARGET_S * 1000:.0f} ms",
            _verdict(ok),
        ),
        Row(
            section,
            "  of which broker + receive (ts -> handed to ingest) p50 / p99",
            f"{_fmt(_ms(r50), '.0f', ' ms')} / {_fmt(_ms(r99), '.0f', ' ms')}",
        ),
        Row(
            section,
            "master CPU while at 5k msg/s",
            _fmt(figures["master_cpu_share"], ".0%", " of a core"),
        ),
    ]
    return figures, rows


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _share(cpu_s: float | None, plan: Plan, result: RunResult) -> float | None:
    if cpu_s is None or result.t_done is None:
        return None
    return cpu_s / (result.t_done - result.t_start)


def scale(workdir: Path, duration_s: float) -> tuple[dict[str, Any], list[Row]]:
    """10,000 nodes every 10 s (1,000 msg/s), with and without Home Assistant discovery."""
    figures: dict[str, Any] = {}
    rows: list[Row] = []
    for ha in (True, False):
        name = "ha_on" if ha else "ha_off"
        figures[name], section_rows = _scale_run(workdir / f"scale-{name}", duration_s, ha)
        rows += section_rows
    return figures, rows


def _api_rows(section: str, api: dict[str, Any], tracked: int, rss_done_kib: int) -> list[Row]:
    """GET /api/nodes and /metrics: the served listing beside the old per-request path."""
    rows: list[Row] = []
    for name, label, old_key, old_label in (
        ("list", "GET /api/nodes, HTTP, after a commit / kept", "old_list_ms", "old path"),
        ("metrics", "GET /metrics (nodes), HTTP, after a commit / kept", "old_metrics_ms", "old"),
    ):
        figure = api[name]
        old = api[old_key]
        after = figure["http_after_commit_ms"]
        rows.append(
            Row(
                section,
                label,
                f"{after:.0f} ms / {figure['http_kept_ms']:.0f} ms",
                f"{old_label} {old:,.0f} ms",
                "< 50 ms",
                f"{old / after:.0f} x faster, {_verdict(after < 50)}",
            )
        )
        rows.append(
            Row(
                section,
                "  same, in-process (no HTTP), after a commit",
                f"{figure['in_process_ms']:.0f} ms",
                f"{figure['bytes'] / 1e6:.1f} MB",
            )
        )
    tagged = api["tagged"]
    rows += [
        Row(
            section,
            f"GET /api/nodes?tag= ({tagged['nodes']:,} nodes), after a commit / kept",
            f"{tagged['http_after_commit_ms']:.0f} ms / {tagged['http_kept_ms']:.0f} ms",
            "",
            "< 50 ms",
            _verdict(tagged["http_after_commit_ms"] < 50),
        ),
        Row(section, "GET /api/nodes/{node}", f"{api['one_node_http_ms']:.1f} ms"),
        Row(
            section,
            "  old path: views() decoding every node, alone",
            f"{api['old_decode_ms']:.0f} ms",
        ),
        Row(
            section,
            # Both are kept while read (dropped 5 minutes after the last read), so a commit
            # no longer frees them: the RSS after it is what a scraped master holds.
            "RSS per node once both were served (kept while read)",
            f"+{(api['rss_after_api_committed_kib'] - rss_done_kib) * 1024 / tracked:,.0f} B",
            "after malloc_trim "
            + (
                f"+{(api['rss_after_api_trimmed_kib'] - rss_done_kib) * 1024 / tracked:,.0f} B"
                if api.get("rss_after_api_trimmed_kib")
                else "n/a"
            ),
        ),
    ]
    return rows


def _scale_run(workdir: Path, duration_s: float, ha: bool) -> tuple[dict[str, Any], list[Row]]:
    rate = SCALE_NODES / SCALE_INTERVAL_S
    plan = Plan(
        nodes=SCALE_NODES,
        metrics=int(rate * duration_s),
        rate=rate,
        births=True,
        birth_rate=2500.0,
        interval_s=SCALE_INTERVAL_S,
    )
    # The API is timed once, on the run with discovery on, after its memory figures.
    result = run_load("master", plan, workdir, ha=ha, master_args=["--api-timing"] if ha else [])
    assert result.master is not None
    master = result.master
    after = result.generator["t_metrics_start"] + SCALE_INTERVAL_S  # every node heard once
    latencies = _steady_latencies(master, after)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    tracked = master["nodes"] - 1  # the probe node was there at the baseline
    per_node = (master["rss_done_kib"] - master["rss_ready_kib"]) * 1024 / tracked
    trimmed = None
    if master.get("rss_done_trimmed_kib") and master.get("rss_ready_trimmed_kib"):
        trimmed = (
            (master["rss_done_trimmed_kib"] - master["rss_ready_trimmed_kib"]) * 1024 / tracked
        )
    state_per_node = master.get("state_bytes", 0) / tracked
    ha_per_node = master.get("ha_bytes", 0) / tracked
    label = "HA discovery on" if ha else "HA discovery off"
    _progress(f"scale ({label}): {per_node:,.0f} B RSS per node, p99 {_fmt(p99, '.3f', ' s')}")
    figures = {
        "ha_discovery": ha,
        "nodes": tracked,
        "interval_s": SCALE_INTERVAL_S,
        "metrics_msgs": plan.metrics,
        "duration_s": duration_s,
        "complete": result.complete,
        "p50_s": p50,
        "p99_s": p99,
        "rss_empty_kib": master["rss_ready_kib"],
        "rss_done_kib": master["rss_done_kib"],
        "rss_bytes_per_node": per_node,
        "rss_trimmed_bytes_per_node": trimmed,
        "state_bytes_per_node": state_per_node,
        "ha_discovery_bytes_per_node": ha_per_node,
        "master_cpu_s": result.cpu_s,
        "api": master.get("api"),
    }
    section = (
        f"scale, {tracked:,} nodes every {SCALE_INTERVAL_S:.0f} s for {duration_s:.0f} s, {label}"
    )
    rows = [
        Row(
            section,
            "latency p50 / p99",
            f"{_fmt(_ms(p50), '.0f', ' ms')} / {_fmt(_ms(p99), '.0f', ' ms')}",
        ),
        Row(
            section,
            "master RSS per tracked node",
            _fmt(per_node / 1024, ".2f", " KiB"),
            f"empty {master['rss_ready_kib'] / 1024:.0f} MiB",
            "< 4 KiB",
            _verdict(per_node < 4096),
        ),
        Row(
            section,
            "  same after malloc_trim (allocator cache returned)",
            _fmt(None if trimmed is None else trimmed / 1024, ".2f", " KiB"),
            "",
            "< 4 KiB",
            _verdict(None if trimmed is None else trimmed < 4096),
        ),
        Row(
            section,
            "  deep size: node state / HA discovery",
            f"{state_per_node:,.0f} B / {ha_per_node:,.0f} B",
        ),
        Row(
            section,
            "master CPU at 1,000 msg/s",
            _fmt(_share(result.cpu_s, plan, result), ".0%", " of a core"),
        ),
    ]
    if master.get("api"):
        rows += _api_rows(section, master["api"], tracked, master["rss_done_kib"])
    return figures, rows


def history(repeat: int) -> tuple[dict[str, Any], list[Row]]:
    """bench/history_query.py (24 h of one node, 7 days of 50 nodes), run as it is."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.history_query", "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^wrote (.+\.json)$", completed.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"history_query failed:\n{completed.stdout}\n{completed.stderr}")
    figures: dict[str, Any] = json.loads(Path(match.group(1)).read_text())
    section = (
        f"history, {figures['samples']:,} samples ({figures['days']:g} d x "
        f"{figures['nodes'] - 1} nodes + 24 h x 1)"
    )
    rows = []
    for index, result in enumerate(figures["results"]):
        first = index == 0
        rows.append(
            Row(
                section,
                f"{result['query']} [{result['source']}, {result['points']} pts]",
                f"{result['direct_median_ms']:.1f} ms",
                f"HTTP {result['http_median_ms']:.1f} ms",
                "< 50 ms" if first else "",
                _verdict(result["http_median_ms"] < 50) if first else "",
            )
        )
    _progress("history queries done")
    return figures, rows


def _progress(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()
