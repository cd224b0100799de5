"""Node tags: the node's setting and details, the master's views, Prometheus and rule config."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster_protocol.config import SettingsError
from cluster_protocol.errors import EnvelopeError
from cluster_protocol.payloads import MachineDetails
from cluster_protocol.schemas import validate_payload
from cluster_protocol.tags import split_tags, tag_problem, valid_tags
from master_service.alerts.rules import BUILTIN_RULES, Rule
from master_service.alerts.settings import parse_alerts
from master_service.ingest.counters import IngestCounters
from master_service.state import ClusterState
from master_service.storage.migrations import SCHEMA_VERSION
from master_service.storage.node_tags import delete_node_tags, load_node_tags
from master_service.storage.store import Store
from master_service.web.prometheus import MasterMetrics, tags_label
from node_publisher.settings import load_settings

NOW = 1_800_000_000.0
BASE_ENV = {"CLUSTER_NODE_ID": "pi-01"}


# -- the tag rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["rack1", "poe", "a", "gpu.big", "row_2-b", "0" * 63])
def test_topic_level_safe_names_are_tags(tag: str) -> None:
    assert tag_problem(tag) is None


@pytest.mark.parametrize("tag", ["", "Rack1", "-x", ".x", "a/b", "a+b", "a#", "a b", "0" * 64, 3])
def test_anything_else_is_refused_with_the_rule(tag: Any) -> None:
    problem = tag_problem(tag)
    assert problem is not None
    assert "a-z, 0-9" in problem


def test_received_tags_keep_only_valid_ones_sorted_once() -> None:
    assert valid_tags(["rack1", "poe", "rack1", "BAD", 7, "a/b"]) == ("poe", "rack1")
    assert valid_tags("rack1") == ()
    assert split_tags(["rack1,poe", " gpu ", "poe", ""]) == ("rack1", "poe", "gpu")


# -- the node's setting -----------------------------------------------------------------------


def test_tags_come_from_toml_variable_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('tags = ["rack1", "poe"]\n')
    assert load_settings([], BASE_ENV).tags == ()
    assert load_settings(["--config", str(config)], BASE_ENV).tags == ("rack1", "poe")
    from_env = load_settings(["--config", str(config)], {**BASE_ENV, "CLUSTER_TAGS": "gpu,rack2"})
    assert from_env.tags == ("gpu", "rack2")  # the variable wins over the file
    assert load_settings(["--tags", "a,b"], BASE_ENV).tags == ("a", "b")
    assert load_settings(["--tag", "a", "--tag", "b"], BASE_ENV).tags == ("a", "b")
    assert load_settings(["--tags", "a", "--tag", "b"], BASE_ENV).tags == ("a", "b")


def test_a_bad_tag_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^tags: a tag must be .*'Rack1'"):
        load_settings(["--tag", "Rack1"], BASE_ENV)
    config = tmp_path / "node.toml"
    config.write_text('tags = "rack1"\n')
    with pytest.raises(SettingsError, match=r"^tags: must be a list of strings"):
        load_settings(["--config", str(config)], BASE_ENV)


def test_machine_details_with_tags_pass_the_schema_and_wrong_types_do_not() -> None:
    details: MachineDetails = {
        "hostname": "pi-01",
        "cpu_percent_used": 1.0,
        "ram": 1,
        "cpu": "arm",
        "cpu_cores": 4,
        "tags": ["rack1", "poe"],
    }
    validate_payload("machine_details", details)
    with pytest.raises(EnvelopeError, match=r"machine_details\.tags must be array"):
        validate_payload("machine_details", {**details, "tags": "rack1"})


# -- the master's view ------------------------------------------------------------------------


def tagged_state() -> ClusterState:
    state = ClusterState(lambda: NOW)
    state.load_master_tags({"pi-01": ["gpu"], "pi-09": ["spare"]})
    with state.lock:
        node = state.node("pi-01")
        node.details = {"tags": ["rack1", "poe", "NOT-valid"]}  # type: ignore[assignment]
        node.status, node.last_heard = "online", NOW
        state.node("pi-02").last_heard = NOW
    return state


def test_views_show_own_master_and_all_tags() -> None:
    state = tagged_state()
    view = state.view("pi-01")
    assert view is not None
    assert view["tags"] == ["gpu", "poe", "rack1"]
    assert view["own_tags"] == ["poe", "rack1"]
    assert view["master_tags"] == ["gpu"]
    other = state.view("pi-02")
    assert other is not None
    assert other["tags"] == []


def test_a_node_tagged_before_it_is_heard_has_its_tags_when_it_comes() -> None:
    state = tagged_state()
    assert state.view("pi-09") is None  # tagging alone does not make a node appear
    with state.lock:
        state.node("pi-09")
    view = state.view("pi-09")
    assert view is not None
    assert view["tags"] == ["spare"]
    state.forget("pi-09")
    with state.lock:
        state.node("pi-09")
    assert state.master_tags("pi-09") == ()


def test_prometheus_node_info_carries_the_tags_between_commas() -> None:
    assert tags_label(["rack1", "poe"]) == ",poe,rack1,"
    assert tags_label([]) == ""
    metrics = MasterMetrics(tagged_state(), IngestCounters(), clock=lambda: NOW)
    text = metrics.exposition().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "picluster_node_info"]
    labels = {s.labels["node"]: s.labels["tags"] for s in family.samples}
    assert labels == {"pi-01": ",gpu,poe,rack1,", "pi-02": ""}


# -- storage ----------------------------------------------------------------------------------


def test_schema_4_has_the_node_tags_table(tmp_path: Path) -> None:
    assert SCHEMA_VERSION >= 4
    store = Store(str(tmp_path / "master.db"))
    try:
        store.connection.executemany(
            "INSERT INTO node_tags (node, tag) VALUES (?, ?)",
            [("pi-01", "rack1"), ("pi-01", "gpu"), ("pi-02", "poe")],
        )
        with pytest.raises(sqlite3.IntegrityError):
            store.connection.execute("INSERT INTO node_tags VALUES ('pi-01', 'gpu')")
        assert load_node_tags(store) == {"pi-01": ("gpu", "rack1"), "pi-02": ("poe",)}
        delete_node_tags(store, "pi-01")
        assert load_node_tags(store) == {"pi-02": ("poe",)}
    finally:
        store.close()


# -- alert rules ------------------------------------------------------------------------------


def test_rule_applies_to_nodes_with_any_of_its_tags_and_its_node_globs() -> None:
    rule = Rule(name="hot", metric="temperature_celsius", above=70.0, tags=("rack1", "gpu"))
    assert rule.applies_to("pi-01", ("gpu",))
    assert rule.applies_to("pi-01", ("poe", "rack1"))
    assert not rule.applies_to("pi-01", ("poe",))
    assert not rule.applies_to("pi-01")
    both = Rule(name="hot2", metric="temperature_celsius", above=70.0, tags=("gpu",), nodes=("a*",))
    assert both.applies_to("a1", ("gpu",))
    assert not both.applies_to("b1", ("gpu",))
    assert Rule(name="all", metric="load_1", above=1.0).applies_to("x", ())


def test_rule_config_takes_tags_on_custom_and_built_in_rules() -> None:
    settings = parse_alerts(
        {
            "builtin": {"temperature": {"tags": ["rack1"]}},
            "rules": [{"name": "busy_gpu", "metric": "load_1", "above": 4, "tags": ["gpu"]}],
        }
    )
    temperature = settings.rule("temperature")
    assert temperature is not None
    assert temperature.tags == ("rack1",)
    assert temperature.above == BUILTIN_RULES["temperature"].above
    custom = settings.rule("busy_gpu")
    assert custom is not None
    assert custom.tags == ("gpu",)


@pytest.mark.parametrize("tags", [["Rack 1"], "rack1", [""]])
def test_a_bad_tags_selector_is_refused_naming_the_rule(tags: Any) -> None:
    table = {"rules": [{"name": "hot", "metric": "load_1", "above": 4, "tags": tags}]}
    with pytest.raises(SettingsError, match=r"^alerts\.rules\[hot\]\.tags: "):
        parse_alerts(table)
