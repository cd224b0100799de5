"""The master's HTTP API as clients see it: JSON everywhere, OpenAPI, history, cluster totals."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from master_service.storage.store import HISTORY_METRICS
from tests.integration.conftest import NODE_IDS, Cluster


def request(url: str, method: str = "GET") -> tuple[int, str, Any]:
    """Status, content type and decoded JSON body of one request, error statuses included."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.headers["content-type"], json.load(response)
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        content_type = error.headers["content-type"]
        assert content_type == "application/json", f"{url}: {content_type}: {body[:200]}"
        return error.code, content_type, json.loads(body)


def test_cluster_totals_count_the_live_nodes(running_cluster: Cluster) -> None:
    status, _, cluster = request(f"{running_cluster.url}/api/cluster")

    assert status == 200
    assert cluster["nodes_total"] == len(NODE_IDS)
    assert cluster["online"] == len(NODE_IDS)
    assert cluster["cores_total"] >= len(NODE_IDS)
    assert cluster["ram_total_bytes"] > 0
    assert 0 <= cluster["cpu_percent_avg"] <= 100
    assert cluster["master"]["received"] > 0


def test_openapi_describes_every_documented_endpoint(running_cluster: Cluster) -> None:
    status, content_type, spec = request(f"{running_cluster.url}/openapi.json")

    assert (status, content_type) == (200, "application/json")
    paths = set(spec["paths"])
    expected = {"/api/nodes", "/api/nodes/{node}", "/api/nodes/{node}/history", "/api/cluster"}
    assert expected | {"/metrics", "/healthz"} <= paths
    params = {p["name"] for p in spec["paths"]["/api/nodes/{node}/history"]["get"]["parameters"]}
    assert {"metric", "since", "until", "step"} <= params


def test_history_of_a_live_node_has_recent_raw_points(running_cluster: Cluster) -> None:
    node = NODE_IDS[0]
    url = f"{running_cluster.url}/api/nodes/{node}/history?metric=memory_percent"

    status, _, answer = request(url)

    assert status == 200
    assert (answer["node"], answer["metric"], answer["source"]) == (node, "memory_percent", "raw")
    assert answer["points"], "no history for a node that has been publishing"
    timestamps = [ts for ts, _ in answer["points"]]
    assert timestamps == sorted(timestamps)
    assert time.time() - timestamps[-1] < 10
    assert all(0 < value <= 100 for _, value in answer["points"])


def test_a_long_range_comes_from_minute_averages(running_cluster: Cluster) -> None:
    now = time.time()
    url = (
        f"{running_cluster.url}/api/nodes/{NODE_IDS[0]}/history"
        f"?metric=cpu_percent&since={now - 7 * 86400:.0f}&until={now + 60:.0f}"
    )

    status, _, answer = request(url)

    assert status == 200
    assert answer["source"] == "rollup"
    assert answer["step_s"] >= 60
    # The minutes not rolled up yet come from raw samples: the newest data is there.
    assert answer["points"], "a week's chart of a live node is empty"
    assert now - answer["points"][-1][0] < answer["step_s"] + 60


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("metric=cpu", "allowed: " + ", ".join(HISTORY_METRICS)),
        ("metric=cpu_percent&since=2000&until=1000", "must be before until"),
        ("metric=cpu_percent&since=0&until=86400&step=1", "use step >= 9"),
        ("metric=cpu_percent&step=-5", "positive number of seconds"),
        ("metric=cpu_percent&since=yesterday", "valid number"),
        ("", "metric"),
    ],
)
def test_a_bad_history_request_is_a_json_422_saying_what_is_allowed(
    running_cluster: Cluster, query: str, says: str
) -> None:
    url = f"{running_cluster.url}/api/nodes/{NODE_IDS[0]}/history?{query}"

    status, _, answer = request(url)

    assert status == 422
    assert says in json.dumps(answer["detail"])


@pytest.mark.parametrize(
    ("path", "method", "code"),
    [
        ("/api/nodes/nobody", "GET", 404),
        ("/api/nodes/nobody/history?metric=cpu_percent", "GET", 404),
        ("/no/such/page", "GET", 404),
        ("/static/missing.js", "GET", 404),
        ("/api/nodes", "DELETE", 405),
        ("/api/cluster", "POST", 405),
    ],
)
def test_errors_are_json_never_html(
    running_cluster: Cluster, path: str, method: str, code: int
) -> None:
    status, content_type, answer = request(f"{running_cluster.url}{path}", method)

    assert (status, content_type) == (code, "application/json")
    assert isinstance(answer["detail"], str)
    assert answer["detail"]
