"""`python -m bench`: every benchmark in one run, a table on stdout, JSON in bench/results/.

    .venv/bin/python -m bench                 # the full run, about 7 minutes on 2 cores
    .venv/bin/python -m bench --quick         # shorter phases, for a smoke check (~3 min)
    .venv/bin/python -m bench --only ingest,node
    .venv/bin/python -m bench --only alerts   # rule cost per sample, event -> webhook POST
    .venv/bin/python -m bench --only storage  # SQLite beside PostgreSQL (not in the default)
    .venv/bin/python -m bench --only masters  # 1-3 masters on PostgreSQL (not in the default)

Set BENCH_PROFILE=DIR to record each Python consumer with py-spy (folded stacks in DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

from bench import sections
from bench.alerts import alerts
from bench.masters import masters
from bench.nodebench import node_footprint
from bench.sections import Row
from bench.storage import storage
from tests.support.postgres import postgres_bindir

RESULTS: Final = Path(__file__).resolve().parent / "results"
SECTIONS: Final = (
    "ingest",
    "latency",
    "scale",
    "node",
    "history",
    "alerts",
    "storage",
    "masters",
)
# storage and masters start a PostgreSQL server of their own and take ~6 and ~12 minutes:
# only with --only.
DEFAULT_SECTIONS: Final = SECTIONS[:-2]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    mosquitto_version = re.search(r"version (\S+)", mosquitto.stdout + mosquitto.stderr)
    memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "nproc": len(_cpus(cpuinfo)),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "memory_gib": round(int(memory.group(1)) / 1024 / 1024, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "paho_mqtt": version("paho-mqtt"),
        "psutil": version("psutil"),
        "orjson": version("orjson"),
        "mosquitto": mosquitto_version.group(1) if mosquitto_version else "unknown",
    }


def _cpus(cpuinfo: str) -> list[str]:
    return re.findall(r"^processor\s*:\s*(\d+)", cpuinfo, re.MULTILINE)


def render(rows: Sequence[Row]) -> str:
    """The figures as an aligned text table, one block per section."""
    headers = ("figure", "value", "baseline", "target", "verdict")
    cells = [(r.figure, r.value, r.baseline, r.target, r.verdict) for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out: list[str] = []
    section = None
    for row, cell in zip(rows, cells, strict=True):
        if row.section != section:
            section = row.section
            out += ["", f"== {section}", line.format(*headers).rstrip()]
        out.append(line.format(*cell).rstrip())
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (a smoke check)")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_SECTIONS), help="comma-separated sections"
    )
    parser.add_argument("--messages", type=int, help="messages per ingest run")
    parser.add_argument("--repeats", type=int, help="ingest runs per consumer")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for tool in ("mosquitto", "mosquitto_sub"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: apt-get install -y mosquitto mosquitto-clients")
    for needs_postgres in ("storage", "masters"):
        if needs_postgres in chosen and postgres_bindir() is None:
            parser.error(
                f"{needs_postgres} needs the PostgreSQL server: apt-get install -y postgresql"
            )
    quick = args.quick
    messages = args.messages or (30_000 if quick else 100_000)
    repeats = args.repeats or (1 if quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="picluster-bench-"))
    runners: dict[str, Callable[[], tuple[dict[str, Any], list[Row]]]] = {
        "ingest": lambda: sections.ingest(workdir, messages, repeats),
        "latency": lambda: sections.latency(workdir, 10.0 if quick else 20.0),
        "scale": lambda: sections.scale(workdir, 30.0 if quick else 80.0),
        "node": lambda: node_footprint(workdir / "node", 20.0 if quick else 60.0),
        "history": lambda: sections.history(5 if quick else 11),
        "alerts": lambda: alerts(workdir, quick),
        "storage": lambda: storage(workdir, messages, repeats, 10.0 if quick else 20.0),
        "masters": lambda: masters(workdir, messages, repeats, 10.0 if quick else 20.0),
    }
    started = time.monotonic()
    figures: dict[str, Any] = {"machine": machine(), "quick": quick}
    rows: list[Row] = []
    try:
        for name in chosen:
            section_figures, section_rows = runners[name]()
            figures[name] = section_figures
            rows += section_rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["wall_s"] = time.monotonic() - started
    info = figures["machine"]
    header = (
        f"picluster bench, {time.strftime('%Y-%m-%d %H:%M')}: {info['nproc']} x {info['cpu_model']}"
        f", Python {info['python']}, paho-mqtt {info['paho_mqtt']}, "
        f"Mosquitto {info['mosquitto']}; {figures['wall_s']:.0f} s"
    )
    table = header + "\n" + render(rows)
    sys.stdout.write(table + "\n")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    figures["table"] = table
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    sys.stdout.write(f"\nwrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
