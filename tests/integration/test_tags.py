"""Tags end to end: a real broker, master and node; the node's own tags, `nodes tag`/`untag`,
`?tag=`, Prometheus, and master-side tags surviving a restart of the master."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, start_master, start_node
from tests.support.waiting import wait_until

TOKEN = "tags-t0ken"


def cli(master: RunningMaster, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLUSTER_API": master.api, "CLUSTER_API_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "master_service", "nodes", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def request(master: RunningMaster, method: str, path: str, token: str | None = TOKEN) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(master.api + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=35) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def node_names(master: RunningMaster, query: str) -> list[str]:
    answer: dict[str, Any] = master.get(f"/api/nodes{query}")
    return [view["node"] for view in answer["nodes"]]


def info_tags(master: RunningMaster) -> dict[str, str]:
    with urllib.request.urlopen(master.api + "/metrics", timeout=5) as response:
        text = response.read().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "picluster_node_info"]
    return {s.labels["node"]: s.labels["tags"] for s in family.samples}


def test_tags_from_the_node_and_the_master(broker: MosquittoBroker, tmp_path: Path) -> None:
    prefix = f"tag{uuid.uuid4().hex[:8]}"
    a, b = f"{prefix}-a", f"{prefix}-b"
    args = ("--prefix", prefix, "--no-ha-discovery")
    env = {"CLUSTER_API_TOKEN": TOKEN}
    master = start_master(broker.url, tmp_path, *args, env=env)
    nodes = [
        start_node(broker.url, tmp_path, a, "--prefix", prefix, "--tag", "rack1", "--tag", "poe"),
        start_node(broker.url, tmp_path, b, "--prefix", prefix, env={"CLUSTER_TAGS": "rack2"}),
    ]
    try:
        wait_until(
            lambda: all((master.node(n) or {}).get("own_tags") for n in (a, b)),
            30,
            0.2,
            "both nodes' details with their own tags",
        )
        view = master.node(a)
        assert view is not None
        assert view["tags"] == view["own_tags"] == ["poe", "rack1"]
        assert view["details"]["tags"] == ["rack1", "poe"]  # as the node sent them

        # Master-side tags: the CLI, through the API with the token.
        done = cli(master, "tag", b, "gpu")
        assert done.returncode == 0, done.stderr
        assert f"tagged {b} gpu; its tags: gpu, rack2" in done.stdout
        assert cli(master, "tag", a, "gpu").returncode == 0
        # Not yet heard of: tagged all the same, for when it comes.
        later = cli(master, "tag", f"{prefix}-c", "spare")
        assert later.returncode == 0
        assert "not heard of" in later.stdout
        assert node_names(master, "?tag=gpu") == [a, b]
        assert node_names(master, "?tag=gpu&tag=rack1") == [a]
        assert node_names(master, "?tag=nothing") == []
        assert info_tags(master) == {a: ",gpu,poe,rack1,", b: ",gpu,rack2,"}

        # Writes need the token; bad names are refused; own tags are not the master's to drop.
        assert request(master, "PUT", f"/api/nodes/{a}/tags/x", token=None) == 401
        assert request(master, "PUT", f"/api/nodes/{a}/tags/Bad%20Tag") == 422
        assert cli(master, "tag", a, "Bad Tag").returncode == 2
        own = cli(master, "untag", a, "poe")
        assert own.returncode == 1
        assert "the node's own tag" in own.stderr
        done = cli(master, "untag", b, "gpu")
        assert done.returncode == 0
        assert "its tags: rack2" in done.stdout
        assert request(master, "DELETE", f"/api/nodes/{b}/tags/gpu") == 404
        assert node_names(master, "?tag=gpu") == [a]
    finally:
        master.stop()

    # Master-side tags are in the database: a new master shows them at once.
    master = start_master(broker.url, tmp_path, *args, env=env, db=master.database)
    try:
        view = master.node(a)
        assert view is not None
        assert view["master_tags"] == ["gpu"]
        assert node_names(master, "?tag=gpu") == [a]
    finally:
        master.stop()
        for node in nodes:
            node.stop()
