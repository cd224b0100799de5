"""How fast history answers: `query_history` directly and `GET /api/nodes/{node}/history`.

Fills a temporary SQLite store the way the master would (`Store.append_history`, then the
retention job's roll-up): one node for 24 h at 10 s, and 50 nodes for 7 days at 10 s. Times
each query (median of --repeat runs) and writes the figures to bench/results/.

    .venv/bin/python -m bench.history_query [--repeat 21] [--nodes 50] [--days 7]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn

from master_service.app import MasterService, build
from master_service.settings import MasterSettings
from master_service.state import NodeState
from master_service.storage.history import HistoryQuery, open_reader, plan, read_history
from master_service.storage.retention import run_retention
from master_service.storage.store import Store
from tests.support.broker import free_port
from tests.support.waiting import wait_until

RESULTS = Path(__file__).resolve().parent / "results"
INTERVAL_S = 10.0
DAY_S = 86400.0
TARGET_MS = 50.0  # issue 4: a 24-hour query for one node at 10 s answers within this


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def payload(rng: random.Random, t: float) -> dict[str, Any]:
    """A plausible metrics payload: a daily CPU wave plus noise."""
    cpu = 30 + 20 * math.sin(t / DAY_S * 2 * math.pi) + rng.uniform(-5, 5)
    return {
        "cpu_percent": cpu,
        "memory_percent": 40 + rng.uniform(-2, 2),
        "swap_percent": 0.0,
        "load_1": cpu / 25,
        "temperature_celsius": 45 + cpu / 5,
        "net_rx_bytes_per_s": rng.uniform(1e3, 1e5),
        "net_tx_bytes_per_s": rng.uniform(1e3, 1e5),
        "disk_read_bytes_per_s": 0.0,
        "disk_write_bytes_per_s": rng.uniform(0, 1e4),
        "disks": [{"mount": "/", "percent": 23.0}],
    }


def fill(store: Store, node: str, end: float, days: float, rng: random.Random) -> int:
    """Write `days` of samples ending at `end`, in batches like the ingest thread."""
    count = int(days * DAY_S / INTERVAL_S)
    start = end - count * INTERVAL_S
    batch: list[tuple[str, float, dict[str, Any]]] = []
    for i in range(count):
        ts = start + i * INTERVAL_S
        batch.append((node, ts, payload(rng, ts)))
        if len(batch) == 5000:
            store.append_history(batch)
            batch = []
    store.append_history(batch)
    store.commit()
    return count


def median_ms(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and worst time of `run` in milliseconds, after one warm-up run."""
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def serve(service: MasterService) -> tuple[uvicorn.Server, threading.Thread, int]:
    """The master's HTTP app on a free port, in a thread (no broker needed to read history)."""
    port = free_port()
    config = uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, message="uvicorn started")
    return server, thread, port


def main(argv: Sequence[str] | None = None) -> int:
    """Fill, roll up, time, print, save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--days", type=float, default=7.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="history-bench-") as workdir:
        return run(args, Path(workdir))


def run(args: argparse.Namespace, workdir: Path) -> int:
    """The benchmark proper, in a directory that is removed afterwards."""
    rng = random.Random(4)
    db = str(workdir / "master.db")
    end = time.time()

    store = Store(db)
    fleet = [f"pi-{i:02d}" for i in range(args.nodes)]
    store.save_nodes([NodeState(n) for n in ["one", *fleet]], end)
    started = time.perf_counter()
    rows = fill(store, "one", end, 1.0, rng)
    for node in fleet:
        rows += fill(store, node, end, args.days, rng)
    fill_s = time.perf_counter() - started
    started = time.perf_counter()
    run_retention(store, end, raw_days=args.days + 1, rollup_days=90)
    rollup_s = time.perf_counter() - started
    store.close()
    size_mb = sum(p.stat().st_size for p in workdir.iterdir()) / 1e6
    _out(f"filled {rows:,} samples in {fill_s:.1f} s, rolled up in {rollup_s:.1f} s")
    _out(f"database: {size_mb:.0f} MB")

    raw_since = end - args.days * DAY_S
    week = args.days * DAY_S
    cases = [
        ("1 node, 24 h, raw every 10 s (step=10)", "one", DAY_S, 10.0),
        ("1 node, 24 h, no step (~2000 points)", "one", DAY_S, None),
        ("1 node, 24 h, dashboard step=288", "one", DAY_S, 288.0),
        ("1 node, 1 h, dashboard step=12", "one", 3600.0, 12.0),
        (f"1 of {args.nodes}, {args.days:g} d, dashboard step=2016", fleet[0], week, 2016.0),
        (f"1 of {args.nodes}, {args.days:g} d, step=120", fleet[-1], week, 120.0),
    ]
    connection = open_reader(db)
    settings = MasterSettings(broker="mqtt://127.0.0.1:1", db=db, ha_discovery=False)
    service = build(settings)
    with service.state.lock:
        for node in ["one", *fleet]:
            service.state.node(node)
    server, thread, port = serve(service)
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def over_http(path: str) -> bytes:
        # Timed up to the last byte received; the client's own JSON parsing is left out.
        client.request("GET", path)
        response = client.getresponse()
        body = response.read()
        assert response.status == 200, body[:300]
        return body

    results: list[dict[str, Any]] = []
    _out(
        f"{'query':44} {'source':>6} {'points':>6} {'direct ms':>10} {'HTTP ms':>9} {'max HTTP':>9}"
    )
    for label, node, span, step in cases:
        query = HistoryQuery(node, "cpu_percent", end - span, end, step)
        answer = read_history(connection, query, raw_since)
        direct, _ = median_ms(partial(read_history, connection, query, raw_since), args.repeat)
        path = f"/api/nodes/{node}/history?metric=cpu_percent&since={end - span}&until={end}" + (
            f"&step={step}" if step is not None else ""
        )
        body = json.loads(over_http(path))
        assert len(body["points"]) == len(answer.points), (label, len(body["points"]))
        over, worst = median_ms(partial(over_http, path), args.repeat)
        source = plan(query, raw_since)[1].value
        figures = f"{direct:>10.2f} {over:>9.2f} {worst:>9.2f}"
        _out(f"{label:44} {source:>6} {len(answer.points):>6} {figures}")
        results.append(
            {
                "query": label,
                "source": source,
                "points": len(answer.points),
                "direct_median_ms": round(direct, 3),
                "http_median_ms": round(over, 3),
                "http_max_ms": round(worst, 3),
            }
        )
    client.close()
    server.should_exit = True
    thread.join(timeout=10)
    connection.close()
    service.store.close()

    target = float(results[0]["http_median_ms"])
    verdict = "meets" if target < TARGET_MS else "MISSES"
    _out(f"24 h at 10 s over HTTP: {target:.1f} ms median, {verdict} the {TARGET_MS:.0f} ms target")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"history_query-{time.strftime('%Y%m%dT%H%M%S')}.json"
    record = {
        "samples": rows,
        "nodes": args.nodes + 1,
        "days": args.days,
        "db_mb": round(size_mb, 1),
        "fill_s": round(fill_s, 2),
        "rollup_s": round(rollup_s, 2),
        "repeat": args.repeat,
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    _out(f"wrote {out}")
    return 0 if target < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
