"""The master's HTTP API as clients see it: JSON everywhere, OpenAPI, history, cluster totals."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from master_service.storage.store import HISTORY_METRICS
from tests.integration.conftest import NODE_IDS, Cluster
from tests.support.broker import MosquittoBroker
from tests.support.processes import start_master
from tests.support.waiting import wait_until


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
        ("metric=cpu_percent&step=-5", "query parameter step: Input should be greater than 0"),
        ("metric=cpu_percent&since=yesterday", "query parameter since: Input should be a valid"),
        ("metric=cpu_percent&until=inf", "query parameter until: Input should be a finite"),
        ("", "query parameter metric: Field required"),
    ],
)
def test_a_bad_history_request_is_a_json_422_saying_what_is_allowed(
    running_cluster: Cluster, query: str, says: str
) -> None:
    url = f"{running_cluster.url}/api/nodes/{NODE_IDS[0]}/history?{query}"

    status, _, answer = request(url)

    assert status == 422
    assert isinstance(answer["detail"], str)  # one sentence, as the OpenAPI document says
    assert says in answer["detail"]


def test_an_invalid_node_id_is_a_422_naming_the_pattern(running_cluster: Cluster) -> None:
    status, _, answer = request(f"{running_cluster.url}/api/nodes/Not_A_Node")

    assert status == 422
    assert answer["detail"].startswith("path parameter node: String should match pattern")


def test_healthz_says_ok_with_every_field(running_cluster: Cluster) -> None:
    status, _, health = request(f"{running_cluster.url}/healthz")

    assert status == 200
    assert health["status"] == "ok"
    assert health["reasons"] == []
    assert health["mqtt_connected"] is True
    assert health["ingest_running"] is True
    assert health["store_error"] is None
    assert health["committed"] > 0
    assert health["queue_depth"] >= 0


def test_healthz_is_503_with_the_reason_once_the_broker_is_gone_longer_than_a_keepalive(
    make_broker: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    own = make_broker()
    master = start_master(own.url, tmp_path, "--keepalive", "1", "--no-ha-discovery")
    try:
        own.stop()

        def unhealthy() -> tuple[int, Any] | None:
            status, _, health = request(f"{master.api}/healthz")
            return (status, health) if status == 503 else None

        _, health = wait_until(unhealthy, 20, 0.2, "/healthz to answer 503")
        assert health["status"] == "unhealthy"
        assert health["mqtt_connected"] is False
        assert any("disconnected from the broker" in reason for reason in health["reasons"])

        own.start()
        wait_until(lambda: request(f"{master.api}/healthz")[0] == 200, 30, 0.2, "healthy again")
    finally:
        master.stop()
        own.stop()


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/nodes/nobody", "DELETE, GET"),
        ("/api/nodes/nobody/commands", "GET, POST"),
        ("/api/placement", "POST"),
        ("/healthz", "GET"),
    ],
)
def test_a_wrong_method_is_a_405_whose_allow_lists_every_method_of_the_path(
    running_cluster: Cluster, path: str, allow: str
) -> None:
    req = urllib.request.Request(f"{running_cluster.url}{path}", method="OPTIONS")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)

    assert caught.value.code == 405
    assert caught.value.headers["Allow"] == allow
    caught.value.close()


def test_openapi_documents_health_both_ways_and_one_error_shape(running_cluster: Cluster) -> None:
    _, _, spec = request(f"{running_cluster.url}/openapi.json")

    health = spec["paths"]["/healthz"]["get"]["responses"]
    assert {"200", "503"} <= set(health)
    body = spec["components"]["schemas"]["HealthBody"]
    assert {"status", "reasons", "mqtt_connected", "queue_depth", "committed"} <= set(
        body["required"]
    )
    assert body["properties"]["status"]["enum"] == ["ok", "unhealthy"]
    node = spec["paths"]["/api/nodes/{node}"]["get"]["responses"]
    assert node["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert node["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "HTTPValidationError" not in spec["components"]["schemas"]


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
