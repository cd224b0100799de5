"""The `cluster-master status` table, rendered from API node views."""

from __future__ import annotations

from master_service.status_table import ago, duration, render_table

NOW = 1_764_000_000.0


def view(node: str, state: str, last_seen: float | None, **metrics: float) -> dict[str, object]:
    return {"node": node, "state": state, "last_seen": last_seen, "metrics": metrics or None}


def test_table_has_aligned_columns_and_a_row_per_node() -> None:
    views = [
        view("pi-01", "online", NOW - 3, cpu_percent=12.345, memory_percent=40.0,
             temperature_celsius=51.26, uptime_s=3 * 86400 + 4 * 3600 + 5),
        view("pi-long-name", "offline", NOW - 7200),
        view("pi-03", "unknown", None),
    ]  # fmt: skip

    lines = render_table(views, now=NOW).splitlines()

    assert lines[0].split() == ["NODE", "STATE", "LAST", "SEEN", "CPU", "%", "MEM", "%", "TEMP",
                                "°C", "UPTIME", "TAGS"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["pi-01", "pi-long-name", "pi-03"]
    assert lines[1].split() == ["pi-01", "online", "3s", "ago", "12.3", "40.0", "51.3", "3d", "4h"]
    assert lines[2].split() == ["pi-long-name", "offline", "2h", "ago", "-", "-", "-", "-"]
    assert "never" in lines[3]
    # Every column starts at the same place on every line.
    state_column = lines[0].index("STATE")
    assert all(line[state_column - 2 : state_column] == "  " for line in lines)
    assert [line[state_column:].split()[0] for line in lines[1:]] == [
        "online",
        "offline",
        "unknown",
    ]


def test_an_offline_node_shows_no_metrics_as_if_current() -> None:
    last = {"cpu_percent": 97.0, "memory_percent": 88.0, "temperature_celsius": 70.0,
            "uptime_s": 3600.0}  # fmt: skip
    views = [view("pi-01", "online", NOW - 3, **last), view("pi-02", "offline", NOW - 600, **last)]

    online, offline = render_table(views, now=NOW).splitlines()[1:]

    assert online.split() == ["pi-01", "online", "3s", "ago", "97.0", "88.0", "70.0", "1h", "0m"]
    assert offline.split() == ["pi-02", "offline", "10m", "ago", "-", "-", "-", "-"]
    assert "97.0" not in offline


def test_an_empty_cluster_says_so() -> None:
    assert render_table([], now=NOW).splitlines()[-1] == "(no nodes yet)"


def test_ago_and_duration_pick_a_readable_unit() -> None:
    assert [ago(NOW - s, NOW) for s in (0, 59, 60, 3600, 86400 * 2)] == [
        "0s ago", "59s ago", "1m ago", "1h ago", "2d ago",
    ]  # fmt: skip
    assert ago(NOW + 5, NOW) == "0s ago"  # a clock slightly ahead is not "in the future"
    assert [duration(s) for s in (None, 42, 312, 18720, 273600)] == [
        "-", "42s", "5m 12s", "5h 12m", "3d 4h",
    ]  # fmt: skip


def test_the_tags_column_lists_a_nodes_tags() -> None:
    tagged = {**view("pi-01", "online", NOW - 3, cpu_percent=5.0), "tags": ["gpu", "rack1"]}
    row = render_table([tagged, view("pi-02", "online", NOW - 3)], now=NOW).splitlines()[1:]
    assert row[0].split()[-1] == "gpu,rack1"
    assert row[1].split()[-1] == "-"  # no tags: the row ends at UPTIME
