"""`--only storage`: the master storing on SQLite (the default) beside PostgreSQL, in one run.

The bench starts a PostgreSQL server of its own (`tests/support/postgres.py`: initdb on a free
loopback port, `fsync` and `synchronous_commit` on, stopped by its PID at the end) and gives
each PostgreSQL run a fresh database; each SQLite run gets a fresh file, as the other
sections do. Every run is a whole `bench.harness.run_load` (its own Mosquitto, the real master
in `bench/master_proc.py`, the load generator), so the two engines see the same load:

- ingest: the ingest section's flat-out load (100 nodes, N envelopes at QoS 1), repeated and
  interleaved SQLite, PostgreSQL, SQLite, ...; rate = envelopes / (first byte -> commit);
- latency: the latency section's paced load at fixed offered rates (2,000 and 5,000 msg/s),
  node `ts` -> committed, repeated and interleaved the same way;
- CPU: the master process's (from `master_proc`, ready -> done) beside the PostgreSQL server's,
  the postmaster and all its children (`ServerCpu`, sampled from /proc over the same window),
  split by process role (the master's connections, the WAL writer, the checkpointer, ...).

Each figure is printed beside SQLite's with the ratio PostgreSQL / SQLite.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.harness import BenchError, RunResult, run_load
from bench.loadgen import Plan
from bench.procstat import cpu_seconds
from bench.sections import (
    Row,
    _fmt,
    _median_threads,
    _ms,
    _progress,
    _run_summary,
    _share,
    _short,
    ingest_plan,
    latency_figures,
    latency_plan,
)
from bench.stats import median, ratio
from tests.support.postgres import PostgresServer

ENGINES: Final = ("sqlite", "postgresql")
LATENCY_RATES: Final = (2000.0, 5000.0)
SAMPLE_EVERY_S: Final = 0.1
QUIET_CPU_S: Final = 0.01  # the server counts as idle below this much CPU per QUIET_WINDOW_S
QUIET_WINDOW_S: Final = 0.5
QUIET_TIMEOUT_S: Final = 20.0
PASSWORD_ENV: Final = "CLUSTER_DB_PASSWORD"
# A client backend's title: "postgres: <user> <database> <host>(<port>) <activity>".
BACKEND_TITLE: Final = re.compile(r"\S+ \S+ [\d.:]+\(\d+\)")
REAPED: Final = "exited (reaped)"


@dataclass(frozen=True, slots=True)
class TreeSample:
    """The CPU seconds of a postmaster's process tree at one moment."""

    at: float
    postmaster: float  # its own and its reaped children's
    children: dict[int, float]  # live children by PID


@dataclass
class ServerCpu:
    """Samples the CPU time of a postmaster and its children from /proc, in a thread of its own.

    A child's CPU moves into the postmaster's cutime/cstime when it exits and is reaped, so the
    tree's total only ever grows; by role, what exited between two samples is shown apart.
    """

    postmaster: int
    every_s: float = SAMPLE_EVERY_S
    samples: list[TreeSample] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ServerCpu:
        """Start sampling."""
        self.samples.append(self.sample())
        self._thread = threading.Thread(target=self._run, name="server-cpu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(self.sample())

    def sample(self) -> TreeSample:
        """The tree's CPU seconds now."""
        children: dict[int, float] = {}
        task = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children")
        for pid in map(int, task.read_text().split()):
            with contextlib.suppress(OSError, ValueError):  # exited meanwhile
                if pid not in self.roles:
                    self.roles[pid] = role_of(pid)
                children[pid] = cpu_seconds(pid)
        own = cpu_seconds(self.postmaster, reaped_children=True)
        return TreeSample(time.time(), own, children)

    def nearest(self, at: float) -> TreeSample:
        """The sample taken closest to wall time `at`."""
        return min(self.samples, key=lambda sample: abs(sample.at - at))

    def between(self, start: float, end: float) -> dict[str, Any]:
        """CPU seconds, in all and by role, between the samples nearest `start` and `end`."""
        first, last = self.nearest(start), self.nearest(end)
        by_role: dict[str, float] = {}
        for pid, seconds in last.children.items():
            role = self.roles.get(pid, "?")
            by_role[role] = by_role.get(role, 0.0) + seconds - first.children.get(pid, 0.0)
        gone = sum(s for pid, s in first.children.items() if pid not in last.children)
        by_role[REAPED] = last.postmaster - first.postmaster - gone
        by_role = {role: seconds for role, seconds in by_role.items() if seconds > 0}
        return {
            "cpu_s": sum(by_role.values()),
            "by_role": by_role,
            "window_s": last.at - first.at,
        }

    def wait_quiet(self, since: float) -> tuple[float, float]:
        """Wait until the server idles (autovacuum, checkpoints done); (seconds, CPU s) since."""
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(QUIET_WINDOW_S)
            now = time.time()
            if self.between(now - QUIET_WINDOW_S, now)["cpu_s"] < QUIET_CPU_S:
                break
        now = time.time()
        return now - since, self.between(since, now)["cpu_s"]


def role_of(pid: int) -> str:
    """A PostgreSQL process's role from its title: "backend" for a client's connection."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    title = title.removeprefix("postgres: ")
    return "backend" if BACKEND_TITLE.match(title) else title


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the bench's own, its password in CLUSTER_DB_PASSWORD meanwhile."""
    server = PostgresServer(workdir)
    before = os.environ.get(PASSWORD_ENV)
    try:
        server.start()
        os.environ[PASSWORD_ENV] = server.password  # the bench's own test password
        yield server
    finally:
        if before is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = before
        server.cleanup()  # pg_ctl stop, waited for by PID (killed by PID if it will not go)


def fresh_database(server: PostgresServer, name: str) -> str:
    """A new empty database's URL without its password (the master reads CLUSTER_DB_PASSWORD)."""
    server.create_database(name)
    return f"{server.url.rpartition('/')[0]}/{name}"


@dataclass
class Bench:
    """One storage run: the server, its CPU sampler and where each run goes."""

    workdir: Path
    server: PostgresServer
    cpu: ServerCpu
    runs: int = 0

    def run(self, engine: str, plan: Plan, name: str) -> tuple[RunResult, dict[str, Any]]:
        """One master run on `engine`; the server's CPU over the master's ready -> done too."""
        self.runs += 1
        db = None
        if engine == "postgresql":
            db = fresh_database(self.server, f"bench_{self.runs}")
        result = run_load("master", plan, self.workdir / f"{name}-{engine}", db=db)
        assert result.master is not None
        server: dict[str, Any] = {}
        if engine == "postgresql":
            master = result.master
            done = master["t_done"] or time.time()
            server = self.cpu.between(master["t_ready"], done)
            # Busy share of a core over the load's span, as the master's (`_share`).
            server["cpu_share"] = _share(server["cpu_s"], plan, result)
            # What the server does once the load is stored (autovacuum's analyze, the
            # checkpointer), before the next run starts.
            server["after_s"], server["after_cpu_s"] = self.cpu.wait_quiet(done)
        return result, server


def storage(
    workdir: Path, messages: int, repeats: int, latency_s: float
) -> tuple[dict[str, Any], list[Row]]:
    """Ingest rate, latency at fixed rates and CPU: SQLite beside PostgreSQL, same run."""
    with postgres(workdir / "postgres") as server:
        postmaster = server.pid()
        if postmaster is None:
            raise BenchError(f"PostgreSQL is not running:\n{server.log_tail()}")
        cpu = ServerCpu(postmaster).start()
        try:
            bench = Bench(workdir / "storage", server, cpu)
            ingest = _ingest(bench, messages, repeats)
            latency = {
                f"{rate:.0f}": _latency(bench, rate, latency_s, repeats) for rate in LATENCY_RATES
            }
        finally:
            cpu.stop()
    version = server.bindir.parent.name if server.bindir else "?"
    figures = {"postgresql": version, "ingest": ingest, "latency": latency}
    section = (
        f"storage, SQLite vs PostgreSQL {version} (fsync on): ingest {ingest['messages']:,} "
        f"msgs; latency {latency_s:.0f} s per rate; median of {repeats}"
    )
    return figures, _ingest_rows(section, ingest) + _latency_rows(section, latency)


def _ingest(bench: Bench, messages: int, repeats: int) -> dict[str, Any]:
    plan = ingest_plan(messages)
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
    for repeat in range(repeats):
        for engine in ENGINES:  # interleaved, so drift on the machine hits both alike
            result, server = bench.run(engine, plan, f"ingest-{repeat}")
            summary = _run_summary(result)
            summary["master_cpu_share"] = _share(result.cpu_s, plan, result)
            if server:
                summary["server"] = server
            runs[engine].append(summary)
            _progress(f"storage ingest {engine} #{repeat + 1}: {_fmt(result.rate, ',.0f')} msg/s")
    out: dict[str, Any] = {"messages": plan.total, "repeats": repeats, "runs": runs}
    for engine in ENGINES:
        engine_runs = runs[engine]
        out[engine] = {
            "rate_msg_s": median([r["rate_msg_s"] for r in engine_runs]),
            "master_cpu_us_per_msg": median([r["cpu_us_per_msg"] for r in engine_runs]),
            "master_thread_cpu_us_per_msg": _median_threads(
                [r.get("thread_cpu_us_per_msg", {}) for r in engine_runs]
            ),
            "master_cpu_share": median([r.get("master_cpu_share") for r in engine_runs]),
            "latency_p99_s": median([r.get("latency_p99_s") for r in engine_runs]),
            "complete": all(r["complete"] for r in engine_runs),
        }
    servers = [r["server"] for r in runs["postgresql"]]
    per_msg = 1e6 / plan.total
    roles = sorted({role for server in servers for role in server["by_role"]})
    out["server"] = {
        "cpu_us_per_msg": median([s["cpu_s"] * per_msg for s in servers]),
        "by_role_us_per_msg": {
            role: median([s["by_role"].get(role, 0.0) * per_msg for s in servers]) for role in roles
        },
        "cpu_share": median([s["cpu_share"] for s in servers]),
        "after_s": median([s["after_s"] for s in servers]),
        "after_cpu_us_per_msg": median([s["after_cpu_s"] * per_msg for s in servers]),
    }
    return out


def _latency(bench: Bench, rate: float, duration_s: float, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
    plan = latency_plan(rate, duration_s)
    for repeat in range(repeats):
        for engine in ENGINES:  # interleaved, as the ingest runs
            result, server = bench.run(engine, plan, f"latency-{rate:.0f}-{repeat}")
            figures = latency_figures(result)
            if server:
                figures["server"] = server
            runs[engine].append(figures)
            _progress(
                f"storage latency {engine} at {rate:,.0f} msg/s #{repeat + 1}: p99 "
                f"{_fmt(figures['p99_s'], '.3f', ' s')}"
            )
    out: dict[str, Any] = {"repeats": repeats, "runs": runs}
    for engine, engine_runs in runs.items():
        keys = ("p50_s", "p99_s", "max_s", "master_cpu_share")
        out[engine] = {key: median([run[key] for run in engine_runs]) for key in keys}
        out[engine]["complete"] = all(run["complete"] for run in engine_runs)
    out["postgresql"]["server_cpu_share"] = median(
        [run["server"]["cpu_share"] for run in runs["postgresql"]]
    )
    return out


def _vs(postgresql: float | None, sqlite: float | None) -> str:
    return f"{_fmt(ratio(postgresql, sqlite), '.2f')} x SQLite"


def _threads(threads: dict[str, float]) -> str:
    return ", ".join(f"{_short(name)} {us:.0f} us" for name, us in threads.items())


def _ingest_rows(section: str, ingest: dict[str, Any]) -> list[Row]:
    pg, lite, server = ingest["postgresql"], ingest["sqlite"], ingest["server"]
    server_total = server["cpu_us_per_msg"]
    master_pg, master_lite = pg["master_cpu_us_per_msg"], lite["master_cpu_us_per_msg"]
    both = None if master_pg is None or server_total is None else master_pg + server_total
    roles = sorted(server["by_role_us_per_msg"].items(), key=lambda item: -item[1])
    return [
        Row(
            section,
            "ingest msg/s, PostgreSQL (SQLite as baseline)",
            _fmt(pg["rate_msg_s"], ",.0f"),
            f"SQLite {_fmt(lite['rate_msg_s'], ',.0f')}",
            "",
            _vs(pg["rate_msg_s"], lite["rate_msg_s"]),
        ),
        Row(
            section,
            "master CPU per message",
            _fmt(master_pg, ".1f", " us"),
            f"SQLite {_fmt(master_lite, '.1f', ' us')}",
            "",
            _vs(master_pg, master_lite),
        ),
        Row(
            section,
            "  master CPU by thread, PostgreSQL",
            _threads(pg["master_thread_cpu_us_per_msg"]),
        ),
        Row(
            section,
            "  master CPU by thread, SQLite",
            _threads(lite["master_thread_cpu_us_per_msg"]),
        ),
        Row(
            section,
            "PostgreSQL server CPU per message (all its processes)",
            _fmt(server_total, ".1f", " us"),
            "SQLite: inside the master",
        ),
        Row(
            section,
            "  by process",
            ", ".join(f"{role} {us:.1f} us" for role, us in roles if us >= 0.05),
        ),
        Row(
            section,
            "master + server CPU per message",
            _fmt(both, ".1f", " us"),
            f"SQLite {_fmt(master_lite, '.1f', ' us')}",
            "",
            _vs(both, master_lite),
        ),
        Row(
            section,
            "cores busy while ingesting: master + server",
            f"{_fmt(pg['master_cpu_share'], '.0%')} + {_fmt(server['cpu_share'], '.0%')}",
            f"SQLite {_fmt(lite['master_cpu_share'], '.0%')}",
        ),
        Row(
            section,
            "  server after the load (until idle)",
            f"{_fmt(server['after_cpu_us_per_msg'], '.1f', ' us')} per message",
            f"over {_fmt(server['after_s'], '.1f', ' s')}",
        ),
    ]


def _latency_rows(section: str, latency: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for rate, engines in latency.items():
        pg, lite = engines["postgresql"], engines["sqlite"]
        rows += [
            Row(
                section,
                f"at {int(rate):,} msg/s: p50 / p99 / max, node ts -> committed",
                " / ".join(_fmt(_ms(pg[k]), ".0f", " ms") for k in ("p50_s", "p99_s", "max_s")),
                "SQLite "
                + " / ".join(_fmt(_ms(lite[k]), ".0f", " ms") for k in ("p50_s", "p99_s", "max_s")),
                "",
                f"p99 {_vs(pg['p99_s'], lite['p99_s'])}",
            ),
            Row(
                section,
                f"  at {int(rate):,} msg/s: cores busy, master + server",
                f"{_fmt(pg['master_cpu_share'], '.0%')} + {_fmt(pg['server_cpu_share'], '.0%')}",
                f"SQLite {_fmt(lite['master_cpu_share'], '.0%')}",
            ),
        ]
    return rows
