"""History store and queries: raw samples, 1-minute rollup, late samples, retention, plans."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from master_service.state import NodeState
from master_service.storage.history import (
    MAX_BUCKETS,
    HistoryQuery,
    HistoryQueryError,
    HistoryReader,
    Source,
    plan,
    query_history,
    read_history,
)
from master_service.storage.retention import DAY_S, RetentionJob, run_retention
from master_service.storage.store import HISTORY_METRICS, Store

T0 = 1_764_000_000.0  # a minute boundary (divisible by 60)


@pytest.fixture
def store(db_target: str) -> Iterator[Store]:
    opened = Store(db_target)
    opened.save_nodes([NodeState("pi-01"), NodeState("pi-02")], T0)
    yield opened
    opened.close()


def add(store: Store, node: str, samples: list[tuple[float, float | None]]) -> None:
    store.append_history((node, ts, {"cpu_percent": cpu}) for ts, cpu in samples)
    store.commit()


def cpu(node: str, since: float, until: float, step: float | None = None) -> HistoryQuery:
    return HistoryQuery(node, "cpu_percent", since, until, step)


def test_raw_points_come_back_in_time_order_even_when_late_ones_arrived_last(store: Store) -> None:
    add(store, "pi-01", [(T0 + 20, 3.0), (T0 + 30, 4.0)])
    add(store, "pi-01", [(T0 + 10, 2.0)])  # spooled while the broker was away
    add(store, "pi-02", [(T0 + 15, 99.0)])

    points = query_history(store.connection, cpu("pi-01", T0, T0 + 60))

    assert points == [(T0 + 10, 2.0), (T0 + 20, 3.0), (T0 + 30, 4.0)]


def test_a_fine_step_averages_raw_samples_per_bucket(store: Store) -> None:
    add(store, "pi-01", [(T0 + s, float(s)) for s in range(0, 40, 10)])  # 0, 10, 20, 30

    result = read_history(store.connection, cpu("pi-01", T0, T0 + 40, step=20))

    assert result.source == Source.RAW
    assert result.points == [(T0, 5.0), (T0 + 20, 25.0)]


def test_rollup_keeps_minute_averages_and_answers_coarse_steps(store: Store) -> None:
    add(store, "pi-01", [(T0 + s, 10.0) for s in range(0, 60, 10)])
    add(store, "pi-01", [(T0 + 60 + s, 40.0) for s in range(0, 60, 10)])
    assert store.roll_up(now=T0 + 600, raw_since=0) == 2
    store.commit()
    rows = store.connection.execute(
        "SELECT ts, samples, cpu_percent FROM metrics_1m ORDER BY ts"
    ).fetchall()
    assert rows == [(T0, 6, 10.0), (T0 + 60, 6, 40.0)]

    result = read_history(store.connection, cpu("pi-01", T0, T0 + 120, step=120))

    assert result.source == Source.ROLLUP
    assert result.step_s == 120
    assert result.points == [(T0, 25.0)]


def test_rollup_averages_weigh_minutes_by_their_samples(store: Store) -> None:
    add(store, "pi-01", [(T0, 10.0)])  # one sample in minute 0 (the node just started)
    add(store, "pi-01", [(T0 + 60 + s, 40.0) for s in range(0, 60, 20)])  # three in minute 1
    store.roll_up(now=T0 + 600, raw_since=0)

    points = query_history(store.connection, cpu("pi-01", T0, T0 + 120, step=120))

    assert points == [(T0, (10.0 + 3 * 40.0) / 4)]


def test_a_metric_the_node_never_reports_stays_empty_in_the_rollup(store: Store) -> None:
    add(store, "pi-01", [(T0 + s, 10.0) for s in range(0, 120, 10)])  # no temperature sensor
    store.roll_up(now=T0 + 600, raw_since=0)

    query = HistoryQuery("pi-01", "temperature_celsius", T0, T0 + 120, 60)

    assert query_history(store.connection, query) == [(T0, None), (T0 + 60, None)]


def test_the_newest_minutes_come_from_raw_until_the_job_rolls_them_up(store: Store) -> None:
    add(store, "pi-01", [(T0 + 10, 10.0)])
    store.roll_up(now=T0 + 120, raw_since=0)  # rolled up to T0 + 60
    add(store, "pi-01", [(T0 + 130, 30.0), (T0 + 190, 50.0)])  # not rolled up yet

    points = query_history(store.connection, cpu("pi-01", T0, T0 + 240, step=60))

    assert points == [(T0, 10.0), (T0 + 120, 30.0), (T0 + 180, 50.0)]


def test_a_late_sample_for_a_rolled_up_minute_is_folded_into_it(store: Store) -> None:
    add(store, "pi-01", [(T0 + 10, 10.0)])
    store.roll_up(now=T0 + 600, raw_since=0)
    add(store, "pi-01", [(T0 + 40, 30.0)])  # arrives from the node's spool, minutes late

    store.roll_up(now=T0 + 660, raw_since=0)

    rows = store.connection.execute(
        "SELECT ts, samples, cpu_percent FROM metrics_1m ORDER BY ts"
    ).fetchall()
    assert rows == [(T0, 2, 20.0)]


def test_retention_keeps_old_minutes_in_the_rollup_after_raw_samples_expire(store: Store) -> None:
    day = DAY_S
    add(store, "pi-01", [(T0 + s, 20.0) for s in range(0, 60, 10)])
    run_retention(store, now=T0 + 600, raw_days=1, rollup_days=5)  # the job, a minute later
    add(store, "pi-01", [(T0 + 3 * day, 50.0)])

    report = run_retention(store, now=T0 + 3 * day + 60, raw_days=1, rollup_days=5)
    assert (report.raw_deleted, report.buckets_deleted) == (6, 0)

    # Raw samples older than a day are gone, the rollup still answers for that time...
    assert query_history(store.connection, cpu("pi-01", T0, T0 + 60)) == []
    old = read_history(store.connection, cpu("pi-01", T0, T0 + 60), raw_since=T0 + 2 * day)
    assert old.source == Source.ROLLUP
    assert old.points == [(T0, 20.0)]
    # ...until the rollup's own retention passes.
    report = run_retention(store, now=T0 + 3 * day + 600, raw_days=1, rollup_days=0.5)
    assert report.buckets_deleted == 1
    assert query_history(store.connection, cpu("pi-01", T0, T0 + 60, step=60)) == []


def test_a_sample_older_than_raw_retention_never_replaces_a_minute_average(store: Store) -> None:
    add(store, "pi-01", [(T0 + s, 20.0) for s in range(0, 60, 10)])
    run_retention(store, now=T0 + 600, raw_days=1, rollup_days=10)
    later = T0 + 2 * DAY_S
    run_retention(store, now=later, raw_days=1, rollup_days=10)  # raw minute deleted
    add(store, "pi-01", [(T0 + 5, 90.0)])  # a two-day-old sample turns up

    run_retention(store, now=later + 60, raw_days=1, rollup_days=10)

    rows = store.connection.execute(
        "SELECT ts, samples, cpu_percent FROM metrics_1m ORDER BY ts"
    ).fetchall()
    assert rows == [(T0, 6, 20.0)]


def test_forgetting_a_node_removes_its_history_and_later_samples_still_roll_up(
    store: Store,
) -> None:
    add(store, "pi-01", [(T0 + 10, 10.0)])
    add(store, "pi-02", [(T0 + 10, 20.0)])
    store.roll_up(now=T0 + 600, raw_since=0)

    store.delete_node("pi-02")  # held the newest rowid: the next insert reuses it
    add(store, "pi-01", [(T0 + 700, 70.0)])
    store.roll_up(now=T0 + 900, raw_since=0)

    rows = store.connection.execute("SELECT node, ts, cpu_percent FROM metrics_1m").fetchall()
    assert rows == [("pi-01", T0, 10.0), ("pi-01", T0 + 660, 70.0)]


def test_store_tells_commit_observers_the_timestamps_it_made_durable(store: Store) -> None:
    seen: list[list[float]] = []
    store.commit_observers.append(seen.append)

    store.append_history([("pi-01", T0 + 1, {}), ("pi-01", T0 + 2, {})])
    assert seen == []
    store.commit()
    store.commit()

    assert seen == [[T0 + 1, T0 + 2]]


@pytest.mark.parametrize(
    ("step", "since", "raw_since", "expected"),
    [
        (None, T0, T0 - 1, (None, Source.RAW)),  # one hour: every sample
        (10.0, T0, T0 - 1, (10.0, Source.RAW)),
        (60.0, T0, T0 - 1, (60.0, Source.ROLLUP)),  # a minute or more: the rollup has it
        (10.0, T0, T0 + 1, (60.0, Source.ROLLUP)),  # raw samples already pruned
        (None, T0, T0 + 1, (60.0, Source.ROLLUP)),
    ],
)
def test_plan_reads_raw_for_fine_recent_steps_and_the_rollup_otherwise(
    step: float | None,
    since: float,
    raw_since: float,
    expected: tuple[float | None, Source],
) -> None:
    assert plan(cpu("pi-01", since, since + 3600, step), raw_since) == expected


def test_plan_averages_a_week_without_a_step_into_a_readable_number_of_points() -> None:
    step, source = plan(cpu("pi-01", T0, T0 + 7 * DAY_S), raw_since=T0 - 1)

    assert source == Source.ROLLUP
    assert step is not None
    assert 7 * DAY_S / step == pytest.approx(2000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "cpu"}, "allowed: " + ", ".join(HISTORY_METRICS)),
        ({"since": T0 + 10, "until": T0}, "must be before until"),
        ({"since": float("nan")}, "finite"),
        ({"step_s": 0.0}, "positive number of seconds"),
        ({"step_s": 1.0, "until": T0 + 2 * MAX_BUCKETS}, "use step >= 2"),
    ],
)
def test_bad_queries_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"node": "pi-01", "metric": "cpu_percent"}
    fields |= {"since": T0, "until": T0 + 60, **kwargs}

    with pytest.raises(HistoryQueryError, match=message.replace("(", r"\(")):
        HistoryQuery(**fields)  # type: ignore[arg-type]


def test_reader_switches_to_the_rollup_once_raw_retention_has_passed(
    store: Store, tmp_path: Path
) -> None:
    add(store, "pi-01", [(T0 + s, 30.0) for s in range(0, 60, 10)])
    store.roll_up(now=T0 + 600, raw_since=0)
    store.commit()
    now = [T0 + 120]
    reader = HistoryReader(store.database, raw_days=1, clock=lambda: now[0])

    recent = reader.read(cpu("pi-01", T0, T0 + 60))
    now[0] = T0 + 2 * DAY_S
    old = reader.read(cpu("pi-01", T0, T0 + 60))
    reader.close()

    assert (recent.source, len(recent.points)) == (Source.RAW, 6)
    assert (old.source, old.points) == (Source.ROLLUP, [(T0, 30.0)])


def test_retention_job_hands_each_pass_to_the_writer_and_stops() -> None:
    passes = threading.Event()
    handed: list[Callable[[Store], None]] = []

    def call_in_writer(task: Callable[[Store], None]) -> None:
        handed.append(task)
        passes.set()

    job = RetentionJob(call_in_writer, raw_days=7, rollup_days=90, every_s=3600)
    job.start()
    assert passes.wait(5), "the job did not schedule a first pass at start"
    job.stop()

    assert len(handed) == 1
    assert not job._thread.is_alive()
