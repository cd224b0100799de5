"""The alerts section: rule cost per sample, then event -> webhook POST latency.

The parts are bench/alert_engine.py (in-process) and bench/alert_delivery.py (a real broker
and master); bench/README.md, "Alerts", says what each measures.

    .venv/bin/python -m bench --only alerts              # both parts, in the bench table
    .venv/bin/python -m bench.alerts [engine|delivery]   # one part alone, JSON on stdout
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.alert_delivery import delivery_latency
from bench.alert_engine import engine_cost
from bench.sections import Row


def alerts(workdir: Path, quick: bool) -> tuple[dict[str, Any], list[Row]]:
    """Both parts: the engine's cost per sample, then the delivery latency."""
    engine_figures, engine_rows = engine_cost(rounds=2 if quick else 5, repeats=3)
    nodes = 25 if quick else 100
    delivery_figures, delivery_rows = delivery_latency(workdir / "alerts", nodes, 10.0)
    return {"engine": engine_figures, "delivery": delivery_figures}, engine_rows + delivery_rows


def main() -> None:
    """Run one part alone: python -m bench.alerts [engine|delivery]."""
    part = sys.argv[1] if len(sys.argv) > 1 else "engine"
    gc.collect()
    if part == "engine":
        figures, rows = engine_cost(3, 1)
    else:
        figures, rows = delivery_latency(Path(tempfile.mkdtemp(prefix="bench-alerts-")), 10, 10.0)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    for row in rows:
        sys.stdout.write(f"{row.figure}: {row.value} ({row.baseline}) {row.verdict}\n")


if __name__ == "__main__":
    main()
