"""`--only masters`: several masters on one PostgreSQL beside one master on SQLite.

Every run starts a Mosquitto of its own and the real `cluster-master run` processes (through
this module's `run` entry point: the command as it is, plus commit-time notes, see `Commits`),
on a fresh PostgreSQL database of the bench's own server (`bench.storage.postgres`) or a fresh
SQLite file. The load generator (`bench/loadgen.py`) drives 500 simulated nodes, so that no
two envelopes of one node share a `ts` (PostgreSQL keeps `(node, ts)` unique), which lets the
bench count what is stored row by row:

- ingest: flat out, QoS 1; rate = envelopes / (first byte -> the last history row committed,
  by whichever master). The bench polls `metrics_raw` (and `forwarded_metrics`) every 0.25 s
  until every sample is stored and the leader took every forwarded one; the end time is the
  latest commit noted by the masters, not the poll's;
- latency: paced at 2,000 msg/s, node `ts` -> committed by the master that stored the row;
- failover: two masters under paced load, the leader killed with SIGKILL; the time until the
  follower answers `GET /api/masters` with role "leader", and until it commits history again
  from its new (leader's) ingest;
- loss: the leader, or the follower, killed under load and restarted 5 s later with the same
  client id (systemd's RestartSec in deploy/picluster-master.service); every sample must then
  be in `metrics_raw` once, `forwarded_metrics` empty, no seq gap on the leader.

Configurations: SQLite (the baseline); PostgreSQL, a sole master (no `--several-masters`);
PostgreSQL with `--several-masters`, 1, 2 and 3 masters.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bench.broker import BenchBroker
from bench.harness import PYTHON, BenchError, _read_event, _start_generator
from bench.loadgen import Plan
from bench.sections import Row, _fmt, _ms, _progress
from bench.stats import median, percentile, ratio
from bench.storage import postgres
from master_service.ingest.ingestor import Ingestor
from tests.support.broker import free_port
from tests.support.postgres import PostgresServer

NODES: Final = 500  # >= loadgen.CHUNK_MAX: no node twice in one chunk, so (node, ts) is unique
# Odd for the kill runs: Mosquitto shares round-robin, so with an even count and 2 masters each
# node's envelopes would all go to the same master; with 501 they alternate, as real timing does.
KILL_NODES: Final = 501
LATENCY_RATE: Final = 2000.0
LATENCY_WARMUP_S: Final = 2.0
FAILOVER_RATE: Final = 2000.0
KILL_AFTER_S: Final = 6.0  # from the generator's first byte
RESTART_AFTER_S: Final = 5.0  # RestartSec of deploy/picluster-master.service
SETTLE_S: Final = 1.0  # after every master answers, for the subscriptions to be in place
POLL_S: Final = 0.25
ROLE_POLL_S: Final = 0.02
STORED_TIMEOUT_S: Final = 120.0
READY_TIMEOUT_S: Final = 30.0
OUT_ENV: Final = "BENCH_COMMITS_OUT"
# The ingest connection's notice when Mosquitto 2.0 overran its Receive Maximum by 4 x: it
# reconnects and the broker sends what was in flight again (bench/README.md, "Storage").
OVERRUN: Final = "closing the ingest connection"


@dataclass(frozen=True, slots=True)
class Config:
    """Which masters, on which engine."""

    name: str
    label: str
    masters: int
    several: bool
    engine: str = "postgresql"


SQLITE: Final = Config("sqlite", "1 master, SQLite", 1, False, "sqlite")
PG_SOLE: Final = Config("pg-sole", "1 master, PostgreSQL (no --several-masters)", 1, False)
CONFIGS: Final = (
    SQLITE,
    PG_SOLE,
    Config("pg-1", "1 of several masters, PostgreSQL", 1, True),
    Config("pg-2", "2 of several masters, PostgreSQL", 2, True),
    Config("pg-3", "3 of several masters, PostgreSQL", 3, True),
)
ONE_PG: Final = "pg-1"
TWO: Final = CONFIGS[3]


# --- The master process: `cluster-master run`, with commit-time notes ----------------------


class Commits:
    """Per committed batch of history rows: when, by which ingestor, how many; per row its ts.

    A thin wrapper around `Ingestor._save` (the class's, so every ingestor the process builds:
    a master that restarts itself as leader builds a new one). It notes the wall time once
    `_save` returned, that is once the batch's transaction committed.
    """

    def __init__(self) -> None:
        self.at: array[float] = array("d")
        self.size: array[int] = array("l")
        self.ingestor: list[int] = []
        self.ts: array[float] = array("d")

    def install(self) -> None:
        """Wrap `Ingestor._save`."""
        original = Ingestor._save
        built: dict[int, int] = {}  # id(ingestor) -> 0, 1, ... in the order they first commit
        commits = self

        def _save(self: Ingestor, *args: Any) -> None:
            original(self, *args)  # raises, nothing noted, when the batch did not commit
            rows = args[1]
            if rows:
                commits.at.append(time.time())
                commits.size.append(len(rows))
                commits.ingestor.append(built.setdefault(id(self), len(built)))
                commits.ts.extend([row[1] for row in rows])

        Ingestor._save = _save  # type: ignore[method-assign,assignment]

    def to_json(self) -> str:
        """The notes as a JSON document."""
        return json.dumps(
            {
                "at": self.at.tolist(),
                "size": self.size.tolist(),
                "ingestor": self.ingestor,
                "ts": self.ts.tolist(),
            }
        )


def master_main(argv: Sequence[str]) -> int:
    """`cluster-master` with commit notes, written to $BENCH_COMMITS_OUT on a clean exit."""
    from master_service import cli

    commits = Commits()
    commits.install()
    status = cli.main(argv)
    out = os.environ.get(OUT_ENV)
    if out:
        Path(out).write_text(commits.to_json())
    return status


# --- The bench side ------------------------------------------------------------------------


@dataclass
class Master:
    """One running `cluster-master run` of a bench run."""

    name: str
    process: subprocess.Popen[bytes]
    api: str
    log_path: Path
    commits_path: Path

    def get(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a JSON document from its API."""
        with urllib.request.urlopen(self.api + path, timeout=timeout_s) as response:
            return json.load(response)

    def role(self) -> str | None:
        """Its role by `/api/masters`, None while it does not answer."""
        try:
            return str(self.get("/api/masters", 1.0).get("role"))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def log(self) -> str:
        """What it wrote."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal it by its PID and wait (killed by its PID if it will not go)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def reconnects(self) -> int:
        """How often its ingest connection closed on the broker's Receive Maximum overrun."""
        return self.log().count(OVERRUN)

    def commits(self) -> dict[str, Any] | None:
        """Its commit notes, once it exited cleanly; None after a SIGKILL."""
        if not self.commits_path.exists():
            return None
        notes: dict[str, Any] = json.loads(self.commits_path.read_text())
        return notes


def wait_for(check: Callable[[], bool], timeout_s: float, every_s: float = POLL_S) -> bool:
    """Poll `check` until true or the timeout; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)


@dataclass
class Run:
    """One run's broker, database and masters."""

    workdir: Path
    config: Config
    server: PostgresServer | None
    number: int
    broker: BenchBroker = field(init=False)
    db: str = ""
    dsn: str = ""  # the bench's own connection string (password included)
    masters: dict[str, Master] = field(default_factory=dict)
    stopped: list[Master] = field(default_factory=list)
    started: int = 0

    def __enter__(self) -> Run:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config.engine == "postgresql":
            assert self.server is not None
            name = f"masters_{self.number}"
            self.dsn = self.server.create_database(name)
            self.db = f"{self.server.url.rpartition('/')[0]}/{name}"  # password from the env
        else:
            self.db = str(self.workdir / "master.db")
        self.broker = BenchBroker(self.workdir / "broker")
        self.broker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_masters()
        finally:
            self.broker.stop()

    def start_master(self, name: str) -> Master:
        """`cluster-master run` as `bench-<name>` (the same client id on a restart)."""
        self.started += 1
        port = free_port()
        argv = [
            PYTHON, "-m", "bench.masters", "run",
            "--broker", self.broker.url,
            "--db", self.db,
            "--http", f"127.0.0.1:{port}",
            "--client-id", f"bench-{name}",
            "--no-ha-discovery",
            "--log-level", "WARNING",
            *(["--several-masters"] if self.config.several else []),
        ]  # fmt: skip
        commits = self.workdir / f"{name}-{self.started}-commits.json"
        log_path = self.workdir / f"{name}-{self.started}.log"
        env = {**os.environ, OUT_ENV: str(commits)}
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        master = Master(name, process, f"http://127.0.0.1:{port}", log_path, commits)
        self.masters[name] = master

        def connected() -> bool:
            if process.poll() is not None:
                raise BenchError(f"master {name} exited with {process.returncode}:\n{master.log()}")
            try:
                return bool(master.get("/healthz", 1.0)["mqtt_connected"])
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                return False

        if not wait_for(connected, READY_TIMEOUT_S, 0.05):
            raise BenchError(f"master {name} did not connect:\n{master.log()}")
        return master

    def start_all(self) -> None:
        """The first master (the leader, when several), then the others (followers)."""
        for index in range(self.config.masters):
            master = self.start_master(f"m{index}")
            if self.config.several:
                want = "leader" if index == 0 else "follower"
                if not wait_for(lambda m=master, w=want: m.role() == w, READY_TIMEOUT_S, 0.05):  # type: ignore[misc]
                    raise BenchError(f"{master.name} is not the {want}: {master.role()}")
        time.sleep(SETTLE_S)

    def counts(self) -> tuple[int, int]:
        """(rows in metrics_raw, rows left in forwarded_metrics)."""
        if self.config.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.dsn) as db:
                row = db.execute(
                    "SELECT (SELECT count(*) FROM metrics_raw), "
                    "(SELECT count(*) FROM forwarded_metrics)"
                ).fetchone()
                assert row is not None
                return int(row[0]), int(row[1])
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
                (stored,) = db.execute("SELECT count(*) FROM metrics_raw").fetchone()
        except sqlite3.OperationalError:  # not created yet, or busy
            return 0, 0
        return int(stored), 0

    def distinct(self) -> int:
        """Distinct (node, ts) in metrics_raw."""
        import psycopg

        with psycopg.connect(self.dsn) as db:
            row = db.execute("SELECT count(*) FROM (SELECT DISTINCT node, ts FROM metrics_raw) d")
            found = row.fetchone()
            assert found is not None
            return int(found[0])

    def wait_stored(self, metrics: int, timeout_s: float = STORED_TIMEOUT_S) -> bool:
        """Until every sample is in metrics_raw and nothing is left to forward."""

        def stored() -> bool:
            rows, forwarded = self.counts()
            return rows >= metrics and forwarded == 0

        return wait_for(stored, timeout_s)

    def stop_masters(self) -> dict[str, dict[str, Any]]:
        """SIGTERM every running master; the commit notes of all that ever ran, by run."""
        # The latest started first: followers before the leader they would take over from (a
        # SIGTERM while a follower restarts itself as leader is lost: see bench/README.md).
        for master in reversed(list(self.masters.values())):
            master.stop()
            self.stopped.append(master)
        self.masters.clear()
        notes: dict[str, dict[str, Any]] = {}
        for master in self.stopped:
            found = master.commits()
            if found is not None:
                notes[master.commits_path.stem] = found
        return notes


def flat_plan(messages: int) -> Plan:
    """500 nodes announce themselves, then `messages` metrics envelopes flat out."""
    return Plan(
        nodes=NODES, metrics=messages, rate=0.0, births=True, birth_rate=0.0, interval_s=1.0
    )


def paced_plan(rate: float, duration_s: float, nodes: int = NODES) -> Plan:
    """`nodes` nodes, `rate` metrics envelopes/s for `duration_s` (whole rounds of nodes)."""
    return Plan(
        nodes=nodes,
        metrics=int(rate * duration_s) // nodes * nodes,
        rate=rate,
        births=True,
        birth_rate=0.0,
        interval_s=nodes / rate,
    )


def _generate(run: Run, plan: Plan) -> tuple[subprocess.Popen[str], IO[str], dict[str, Any]]:
    generator = _start_generator(run.broker, plan)
    assert generator.stdout is not None
    started = _read_event(generator.stdout, "start", 30)
    return generator, generator.stdout, started


def _end(generator: subprocess.Popen[str]) -> None:
    if generator.poll() is None:
        generator.terminate()
        generator.wait(10)


def _latencies(notes: dict[str, dict[str, Any]], after: float) -> list[float]:
    out: list[float] = []
    for note in notes.values():
        index = 0
        for at, size in zip(note["at"], note["size"], strict=True):
            out += [at - ts for ts in note["ts"][index : index + size] if ts >= after]
            index += size
    return out


def _shares(notes: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: sum(note["size"]) for name, note in notes.items()}


def load_run(
    bench_dir: Path, server: PostgresServer | None, config: Config, plan: Plan, number: int
) -> dict[str, Any]:
    """One run of `plan` against `config`: rate, latency, each master's share."""
    with Run(bench_dir / f"run-{number}-{config.name}", config, server, number) as run:
        run.start_all()
        generator, stdout, started = _generate(run, plan)
        try:
            generated = _read_event(stdout, "done", 600)
            complete = run.wait_stored(plan.metrics)
            stored, forwarded = run.counts()
        finally:
            _end(generator)
        notes = run.stop_masters()
        reconnects = sum(master.reconnects() for master in run.stopped)
    last = max((max(note["at"]) for note in notes.values() if note["at"]), default=None)
    rate = plan.total / (last - started["t"]) if complete and last else None
    after = generated["t_metrics_start"] + (LATENCY_WARMUP_S if plan.rate else 0.0)
    latencies = _latencies(notes, after)
    return {
        "config": config.name,
        "complete": complete,
        "stored": stored,
        "forwarded_left": forwarded,
        "rate_msg_s": rate,
        "t_start": started["t"],
        "t_done": last,
        "generator": generated,
        "shares": _shares(notes),
        "reconnects": reconnects,
        "samples": len(latencies),
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies) if latencies else None,
    }


def kill_run(
    bench_dir: Path, server: PostgresServer, victim: str, number: int, duration_s: float
) -> dict[str, Any]:
    """Two masters under paced load; SIGKILL the leader or the follower, restart it 5 s later."""
    plan = paced_plan(FAILOVER_RATE, duration_s, KILL_NODES)
    with Run(bench_dir / f"run-{number}-kill-{victim}", TWO, server, number) as run:
        run.start_all()
        leader, follower = run.masters["m0"], run.masters["m1"]
        killed, survivor = (leader, follower) if victim == "leader" else (follower, leader)
        generator, stdout, started = _generate(run, plan)
        result: dict[str, Any] = {"victim": victim, "metrics": plan.metrics}
        try:
            time.sleep(max(0.0, started["t"] + KILL_AFTER_S - time.time()))
            killed.stop(signal.SIGKILL)
            t_kill = time.time()
            run.stopped.append(run.masters.pop(killed.name))
            if victim == "leader":
                led = wait_for(lambda: survivor.role() == "leader", 30, ROLE_POLL_S)
                result["api_leader_s"] = time.time() - t_kill if led else None
            time.sleep(max(0.0, t_kill + RESTART_AFTER_S - time.time()))
            restarted = run.start_master(killed.name)
            result["restarted_role"] = restarted.role()
            generated = _read_event(stdout, "done", 600)
            result["acked_by_broker"] = generated["acked"]
            result["complete"] = run.wait_stored(plan.metrics)
            stored, forwarded = run.counts()
            result.update(stored=stored, distinct=run.distinct(), forwarded_left=forwarded)
            result["lost"] = plan.metrics - result["distinct"]
            head = survivor if victim == "leader" else leader
            result.update(_leader_view(head, plan))
            # What the restarted head took from the broker and refused (its old session's
            # subscriptions come back with it).
            result["restarted_counters"] = restarted.get("/api/cluster")["master"]
        finally:
            _end(generator)
        notes = run.stop_masters()
    result["shares"] = _shares(notes)
    survivor_notes = [n for name, n in notes.items() if name.startswith(f"{survivor.name}-")]
    if survivor_notes:
        result.update(_resume(survivor_notes[0], t_kill))
    return result


def _leader_view(leader: Master, plan: Plan) -> dict[str, Any]:
    """The leader's counters once it caught up: nodes at the last seq, gaps, duplicates."""
    last_seq = plan.metrics // plan.nodes + 1
    view: dict[str, Any] = {}

    def caught_up() -> bool:
        try:
            body = leader.get("/api/nodes", 10.0)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        nodes = body["nodes"]
        listed = list(nodes.values()) if isinstance(nodes, dict) else list(nodes)
        counters = [node.get("counters") or {} for node in listed]
        view.update(
            nodes=len(listed),
            nodes_at_last_seq=sum(1 for c in counters if c.get("last_seq") == last_seq),
            seq_gaps=sum(int(c.get("seq_gaps") or 0) for c in counters),
            duplicates=sum(int(c.get("duplicates") or 0) for c in counters),
        )
        return bool(view["nodes_at_last_seq"] == plan.nodes)

    view["leader_caught_up"] = wait_for(caught_up, 30, 0.5)
    return view


def _resume(note: dict[str, Any], t_kill: float) -> dict[str, Any]:
    """When the survivor committed history again, from its notes."""
    at, built = note["at"], note["ingestor"]
    after = [(a, i) for a, i in zip(at, built, strict=True) if a > t_kill]
    before = [a for a in at if a <= t_kill]
    out: dict[str, Any] = {}
    if after:
        # The longest time nothing was committed by the survivor, from its last commit before.
        times = ([before[-1]] if before else []) + [a for a, _ in after]
        window = [b - a for a, b in itertools.pairwise(times) if a < t_kill + 20]
        out["longest_pause_s"] = max(window) if window else None
        first_ingestor = built[0] if built else 0
        new = [a for a, i in after if i != first_ingestor]
        out["stores_as_leader_s"] = new[0] - t_kill if new else None
    return out


def _interleaved(
    bench_dir: Path,
    server: PostgresServer,
    plan: Plan,
    repeats: int,
    kind: str,
    numbers: list[int],
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in CONFIGS}
    for repeat in range(repeats):
        for config in CONFIGS:  # interleaved: drift on the machine hits all alike
            numbers[0] += 1
            figures = load_run(
                bench_dir / kind,
                server if config.engine != "sqlite" else None,
                config,
                plan,
                numbers[0],
            )
            runs[config.name].append(figures)
            _progress(
                f"masters {kind} {config.name} #{repeat + 1}: "
                f"{_fmt(figures['rate_msg_s'], ',.0f')} msg/s, "
                f"p99 {_fmt(figures['p99_s'], '.3f', ' s')}, "
                f"{figures['reconnects']} overrun reconnects"
                f"{'' if figures['complete'] else ', INCOMPLETE'}; shares {figures['shares']}"
            )
    return runs


def masters(
    workdir: Path, messages: int, repeats: int, latency_s: float
) -> tuple[dict[str, Any], list[Row]]:
    """Ingest, latency, failover and loss with 1-3 masters on PostgreSQL beside SQLite."""
    numbers = [0]
    with postgres(workdir / "postgres") as server:
        bench_dir = workdir / "masters"
        ingest = _interleaved(bench_dir, server, flat_plan(messages), repeats, "ingest", numbers)
        latency = _interleaved(
            bench_dir,
            server,
            paced_plan(LATENCY_RATE, latency_s),
            max(1, repeats - 1),
            "latency",
            numbers,
        )
        kills: list[dict[str, Any]] = []
        for victim in ["leader"] * max(3, repeats) + ["follower"] * max(1, repeats - 1):
            numbers[0] += 1
            result = kill_run(bench_dir / "kill", server, victim, numbers[0], latency_s)
            kills.append(result)
            _progress(
                f"masters kill {victim}: "
                f"api leader {_fmt(result.get('api_leader_s'), '.2f', ' s')}, "
                f"stores as leader {_fmt(result.get('stores_as_leader_s'), '.2f', ' s')}, "
                f"lost {result['lost']}, gaps {result.get('seq_gaps')}"
            )
    version = server.bindir.parent.name if server.bindir else "?"
    figures = {
        "postgresql": version,
        "nodes": NODES,
        "ingest": _summary(ingest),
        "latency": _summary(latency),
        "kills": kills,
        "runs": {"ingest": ingest, "latency": latency},
    }
    plan = flat_plan(messages)
    section = (
        f"masters, several on PostgreSQL {version} vs SQLite: {NODES} nodes, ingest "
        f"{plan.total:,} msgs flat out (median of {repeats}); latency at {LATENCY_RATE:,.0f} msg/s "
        f"for {latency_s:.0f} s (median of {max(1, repeats - 1)})"
    )
    return figures, _rows(section, figures)


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "rate_msg_s": median([r["rate_msg_s"] for r in config_runs]),
            "p50_s": median([r["p50_s"] for r in config_runs]),
            "p99_s": median([r["p99_s"] for r in config_runs]),
            "max_s": median([r["max_s"] for r in config_runs]),
            "complete": all(r["complete"] for r in config_runs),
            "rates": [r["rate_msg_s"] for r in config_runs],
            "reconnects": sum(r["reconnects"] for r in config_runs),
        }
        for name, config_runs in runs.items()
    }


def _rows(section: str, figures: dict[str, Any]) -> list[Row]:
    ingest, latency = figures["ingest"], figures["latency"]
    lite, one = ingest[SQLITE.name], ingest[ONE_PG]
    rows: list[Row] = []
    for config in CONFIGS:
        mine = ingest[config.name]
        rows.append(
            Row(
                section,
                f"ingest msg/s, {config.label}",
                _fmt(mine["rate_msg_s"], ",.0f") + ("" if mine["complete"] else " INCOMPLETE"),
                " / ".join(_fmt(r, ",.0f") for r in mine["rates"])
                + f"; {mine['reconnects']} overrun reconnects",
                "",
                f"{_fmt(ratio(mine['rate_msg_s'], lite['rate_msg_s']), '.2f')} x SQLite, "
                f"{_fmt(ratio(mine['rate_msg_s'], one['rate_msg_s']), '.2f')} x 1 of several",
            )
        )
    lat_lite, lat_one = latency[SQLITE.name], latency[ONE_PG]
    for config in CONFIGS:
        mine = latency[config.name]
        rows.append(
            Row(
                section,
                f"at {LATENCY_RATE:,.0f} msg/s, p50 / p99 / max, {config.label}",
                " / ".join(_fmt(_ms(mine[k]), ".0f", " ms") for k in ("p50_s", "p99_s", "max_s"))
                + ("" if mine["complete"] else " INCOMPLETE"),
                "",
                "",
                f"p99 {_fmt(ratio(mine['p99_s'], lat_lite['p99_s']), '.2f')} x SQLite, "
                f"{_fmt(ratio(mine['p99_s'], lat_one['p99_s']), '.2f')} x 1 of several",
            )
        )
    kills = figures["kills"]
    leader_kills = [k for k in kills if k["victim"] == "leader"]
    api = [k.get("api_leader_s") for k in leader_kills]
    stores = [k.get("stores_as_leader_s") for k in leader_kills]
    pause = [k.get("longest_pause_s") for k in leader_kills]
    present = [v for v in api if v is not None]
    rows += [
        Row(
            section,
            f"failover: leader SIGKILL -> follower's /api/masters says leader "
            f"(median / max of {len(api)})",
            f"{_fmt(median(api), '.2f', ' s')} / "
            f"{_fmt(max(present) if present else None, '.2f', ' s')}",
            " / ".join(_fmt(v, ".2f") for v in api),
            "",
            "" if len(present) == len(api) else f"{len(api) - len(present)} never led",
        ),
        Row(
            section,
            "  -> its new (leader's) ingest commits history, median / max",
            f"{_fmt(median(stores), '.2f', ' s')} / "
            f"{_fmt(max([v for v in stores if v is not None], default=None), '.2f', ' s')}",
            " / ".join(_fmt(v, ".2f") for v in stores),
        ),
        Row(
            section,
            "  longest time the survivor committed nothing, median / max",
            f"{_fmt(median(pause), '.2f', ' s')} / "
            f"{_fmt(max([v for v in pause if v is not None], default=None), '.2f', ' s')}",
        ),
    ]
    for victim in ("leader", "follower"):
        mine = [k for k in kills if k["victim"] == victim]
        if not mine:
            continue
        sent = sum(k["metrics"] for k in mine)
        lost = sum(k["lost"] for k in mine)
        rows.append(
            Row(
                section,
                f"kill the {victim} under load, restart it 5 s later ({len(mine)} runs): lost",
                f"lost: {lost}",
                f"of {sent:,} sent; stored {sum(k['stored'] for k in mine):,}",
                "0",
                "met" if lost == 0 else "MISSED",
            )
        )
        rows.append(
            Row(
                section,
                f"  after killing the {victim}: forwarded left / seq gaps / dup. / caught up",
                f"{sum(k['forwarded_left'] for k in mine)} / "
                f"{sum(k.get('seq_gaps') or 0 for k in mine)} / "
                f"{sum(k.get('duplicates') or 0 for k in mine)} / "
                f"{sum(1 for k in mine if k.get('leader_caught_up'))} of {len(mine)}",
                "restarted as " + ", ".join(str(k.get("restarted_role")) for k in mine),
                "0 / 0",
                "met"
                if all(k["forwarded_left"] == 0 and not k.get("seq_gaps") for k in mine)
                else "MISSED",
            )
        )
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        sys.exit(master_main(sys.argv[1:]))
    sys.exit("usage: python -m bench.masters run [cluster-master run's options]")
