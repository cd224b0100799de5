"""One load run: a fresh broker, one consumer (master or a baseline), the load generator."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from bench import wire
from bench.broker import BenchBroker
from bench.loadgen import Plan
from bench.procstat import cpu_seconds

PYTHON: Final = sys.executable
PROBE_NODE: Final = "bench-probe"
READY_TIMEOUT_S: Final = 30.0

# "master" receives with the master's default client (mqtt5); "master-paho" with paho, the
# receive path before issue 14, measured beside it in the same run.
MASTER_CLIENTS: Final = {"master": "mqtt5", "master-paho": "paho"}
CONSUMERS: Final = ("master", "master-paho", "paho", "mosquitto_sub")


class BenchError(RuntimeError):
    """A run that could not be measured (a consumer never got ready, a process died)."""


@dataclass
class RunResult:
    """What one run measured."""

    consumer: str
    plan: Plan
    t_start: float
    t_done: float | None
    received: int
    cpu_s: float | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    master: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """True when the consumer got every message."""
        return self.t_done is not None and self.received >= self.plan.total + 1

    @property
    def rate(self) -> float | None:
        """Messages per second from the generator's first byte to the consumer's last message."""
        if not self.complete or self.t_done is None:
            return None
        return self.plan.total / (self.t_done - self.t_start)


def _read_event(stream: IO[str], name: str, timeout_s: float) -> dict[str, Any]:
    """The next JSON line from a child whose "event" is `name`."""
    box: list[dict[str, Any]] = []

    def read() -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in (name, "error"):
                box.append(event)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not box:
        raise BenchError(f"no {name!r} event within {timeout_s} s")
    if box[0]["event"] == "error":
        raise BenchError(str(box[0].get("reason")))
    return box[0]


def _stop(process: subprocess.Popen[Any], grace_s: float = 0.0) -> None:
    if grace_s:
        # py-spy writes its profile when its child ends; SIGTERM before that loses it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _start_generator(broker: BenchBroker, plan: Plan) -> subprocess.Popen[str]:
    argv = [
        PYTHON,
        "-m",
        "bench.loadgen",
        "--port",
        str(broker.port),
        "--nodes",
        str(plan.nodes),
        "--metrics",
        str(plan.metrics),
        "--rate",
        str(plan.rate),
        "--birth-rate",
        str(plan.birth_rate),
        "--interval",
        str(plan.interval_s),
        "--node-prefix",
        plan.node_prefix,
    ]
    if plan.births:
        argv.append("--births")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _consumer_argv(
    kind: str,
    broker: BenchBroker,
    target: int,
    workdir: Path,
    ha: bool,
    master_args: Sequence[str] = (),
    db: str | None = None,
) -> list[str]:
    timeout = "600"
    if kind in MASTER_CLIENTS:
        return [
            PYTHON,
            "-m",
            "bench.master_proc",
            "--broker",
            broker.url,
            "--db",
            db or str(workdir / "master.db"),
            "--target",
            str(target),
            "--timeout",
            timeout,
            "--out",
            str(workdir / "master.json"),
            "--deep-size",
            "--ingest-client",
            MASTER_CLIENTS[kind],
            *([] if ha else ["--no-ha"]),
            *master_args,
        ]
    if kind == "paho":
        return [
            PYTHON,
            "-m",
            "bench.paho_counter",
            "--port",
            str(broker.port),
            "--target",
            str(target),
            "--timeout",
            timeout,
        ]
    if kind == "mosquitto_sub":
        return [
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "cluster/#",
            "-C",
            str(target),
        ]
    raise ValueError(f"unknown consumer {kind!r}")


def run_load(
    kind: str,
    plan: Plan,
    workdir: Path,
    timeout_s: float = 300.0,
    ha: bool = True,
    master_args: Sequence[str] = (),
    db: str | None = None,
) -> RunResult:
    """Start a broker and `kind`, wait until it is subscribed, drive `plan`, collect figures.

    `ha=False` runs the master with Home Assistant discovery off; `master_args` go to
    `bench/master_proc.py` (e.g. `--api-timing`); `db` is the master's database (default: a
    fresh SQLite file in `workdir`; a PostgreSQL URL takes its password from
    `CLUSTER_DB_PASSWORD`, as `cluster-master` does).
    """
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    broker = BenchBroker(workdir / "broker")
    broker.start()
    consumer: subprocess.Popen[str] | None = None
    generator: subprocess.Popen[str] | None = None
    profiling = False
    try:
        # A retained probe reaches the consumer as soon as its subscription is in place.
        probe = wire.envelope_bytes("status", PROBE_NODE, time.time(), 0, {"state": "online"})
        wire.publish_one(broker.host, broker.port, f"cluster/{PROBE_NODE}/status", probe, True)
        target = plan.total + 1
        argv = _consumer_argv(kind, broker, target, workdir, ha, master_args, db)
        profile_dir = os.environ.get("BENCH_PROFILE")
        if profile_dir and kind != "mosquitto_sub":
            profiling = True
            # py-spy (pip install py-spy) samples the consumer; "raw" is folded stacks.
            output = Path(profile_dir) / f"{kind}-{plan.nodes}n-{int(time.time())}.txt"
            argv = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", str(output), "--", *argv]
        consumer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert consumer.stdout is not None
        if kind == "mosquitto_sub":
            _wait_first_line(consumer.stdout)
            drain = threading.Thread(target=_drain, args=(consumer.stdout,), daemon=True)
            drain.start()
            exit_watch = _ExitWatch(consumer, timeout_s)
        else:
            _read_event(consumer.stdout, "ready", READY_TIMEOUT_S)
        generator = _start_generator(broker, plan)
        assert generator.stdout is not None
        started = _read_event(generator.stdout, "start", 30)
        generated = _read_event(generator.stdout, "done", timeout_s)
        if kind == "mosquitto_sub":
            exit_watch.join(timeout_s)
            received = target if exit_watch.exited_at is not None else 0
            return RunResult(
                kind,
                plan,
                started["t"],
                exit_watch.exited_at,
                received,
                exit_watch.cpu_s,
                generated,
            )
        done = _read_event(consumer.stdout, "done", timeout_s + 30)
        if kind in MASTER_CLIENTS:
            master = json.loads((workdir / "master.json").read_text())
            return RunResult(
                kind,
                plan,
                started["t"],
                master["t_done"],
                master["committed"],
                master["cpu_s"],
                generated,
                master,
            )
        return RunResult(
            kind, plan, started["t"], done["t_done"], done["count"], done["cpu_s"], generated
        )
    finally:
        if generator is not None:
            _stop(generator)
        if consumer is not None:
            _stop(consumer, grace_s=30.0 if profiling else 0.0)
        broker.stop()


def _wait_first_line(stream: IO[str]) -> None:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    if not box:
        raise BenchError("mosquitto_sub did not receive the probe")


def _drain(stream: IO[str]) -> None:
    buffer = stream.buffer  # type: ignore[attr-defined]
    while buffer.read1(1 << 20):
        pass


class _ExitWatch(threading.Thread):
    """mosquitto_sub -C exits after the target count: its exit time is the done time."""

    def __init__(self, process: subprocess.Popen[str], timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.timeout_s = timeout_s
        self.exited_at: float | None = None
        self.cpu_start = cpu_seconds(process.pid)
        self.cpu_s = 0.0
        self.start()

    def run(self) -> None:
        """Poll until the process exits, noting its CPU time while it still can be read."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):  # already reaped
                self.cpu_s = cpu_seconds(self.process.pid) - self.cpu_start
            if self.process.poll() is not None:
                self.exited_at = time.time()
                return
            time.sleep(0.002)
