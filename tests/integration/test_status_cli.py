"""`cluster-master status` against a running master, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import NODE_IDS, Cluster


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "master_service", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_json_lists_every_node_with_its_state(running_cluster: Cluster) -> None:
    done = run_status("--api", running_cluster.url, "--json")

    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)
    assert [n["node"] for n in nodes] == list(NODE_IDS)
    assert {n["state"] for n in nodes} == {"online"}
    assert all(0 <= n["metrics"]["cpu_percent"] <= 100 for n in nodes)


def test_status_table_has_a_row_per_node(running_cluster: Cluster) -> None:
    done = run_status("--api", running_cluster.url)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [[n, "online"] for n in NODE_IDS]


def test_status_says_so_when_no_master_answers() -> None:
    done = run_status("--api", "http://127.0.0.1:9", "--json")

    assert done.returncode == 1
    assert "cannot read http://127.0.0.1:9/api/nodes" in done.stderr
    assert done.stdout == ""
