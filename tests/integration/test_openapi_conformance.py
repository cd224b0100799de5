"""The API does what /openapi.json says: schemathesis, all checks, against a live master.

A real broker, `cluster-master run` with an API token and one `cluster-node run`; schemathesis
(its CLI, as a user would run it) generates requests from the document, valid and invalid,
and checks every answer against it: status codes, bodies, headers, Allow, auth, 5xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

TOKEN = "conformance-t0ken"
# Fixed, so a failure reproduces; the output names it (and `st replay` ids) as well.
SEED = 20261202
MAX_EXAMPLES = 30
# Once the node is known it samples hourly: a node the run forgets (DELETE) stays
# forgotten, as the use-after-free check expects, instead of coming back with its next sample.
QUIET_INTERVAL_S = 3600

# Operations whose path names a node get the live node half the time, so their 200
# answers are checked too, not only 404s. Cross-parameter rules that OpenAPI cannot state
# (since before until, at most 10,000 points) answer a schema-valid history query with 422,
# and a command the node does not answer in `timeout_s` is a 504 by design.
CONFIG = """
[dictionaries.nodes]
values = ["{node}"]

[[operations]]
include-name = "GET /api/nodes/{{node}}"
parameters = {{ "path.node" = {{ dictionary = "nodes", probability = 0.5 }} }}

[[operations]]
include-name = "GET /api/nodes/{{node}}/history"
parameters = {{ "path.node" = {{ dictionary = "nodes", probability = 0.5 }} }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422"]

[[operations]]
include-name = "POST /api/nodes/{{node}}/commands"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]
"""


def post(master: RunningMaster, path: str, body: dict[str, Any]) -> Any:
    """POST JSON with the API token; the decoded answer."""
    request = urllib.request.Request(
        master.api + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@dataclass
class LiveMaster:
    master: RunningMaster
    node: Service
    node_id: str


@pytest.fixture
def live_master(broker: MosquittoBroker, tmp_path: Path) -> Iterator[LiveMaster]:
    prefix = f"oas{uuid.uuid4().hex[:8]}"
    node_id = f"{prefix}-01"
    master = start_master(
        broker.url,
        tmp_path,
        "--prefix",
        prefix,
        "--client-id",
        f"picluster-master-{prefix}",
        "--no-ha-discovery",
        env={"CLUSTER_API_TOKEN": TOKEN},
    )
    node = start_node(broker.url, tmp_path, node_id, "--prefix", prefix, interval=1.0)
    try:

        def has_metrics() -> bool:
            view = master.node(node_id)
            return bool(view and view["metrics"] and view["details"])

        wait_until(has_metrics, 30, 0.2, "the node's first sample at the master")
        quiet = {"command": "set_interval", "args": {"interval_s": QUIET_INTERVAL_S}}
        reply = post(master, f"/api/nodes/{node_id}/commands", quiet)
        assert reply["ok"], reply
        wait_until(
            lambda: (
                (master.node(node_id) or {}).get("details", {}).get("interval_s")
                == QUIET_INTERVAL_S
            ),
            10,
            message="the node's details with the hourly interval",
        )
        yield LiveMaster(master, node, node_id)
    finally:
        node.stop()
        master.stop()


def test_schemathesis_finds_no_failure_with_all_checks(
    live_master: LiveMaster, tmp_path: Path
) -> None:
    spec = live_master.master.get("/openapi.json")
    operations = sum(len(methods) for methods in spec["paths"].values())
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(node=live_master.node_id))
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli",
            "--config-file", str(config),
            "run", f"{live_master.master.api}/openapi.json",
            "--checks", "all",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--workers", "1",
            "--request-timeout", "10",
            "--no-color",
        ],
        cwd=tmp_path,  # its cache directory lands here, not in the checkout
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Every operation tested, none skipped for a schema error.
    assert f"Tested: {operations}" in output, output
    assert " passed" in output, output
    assert "failed" not in output, output
