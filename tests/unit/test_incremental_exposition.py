"""The nodes' /metrics families are remade from the last text: only changed nodes written anew.

The same random cluster as the listing's test (real router and handlers); after each commit
the text must be byte for byte the full exposition (and, now and then, prometheus_client's
own output), and the build must have been incremental unless the node set changed.
"""

from __future__ import annotations

import sys
import threading

import pytest

from master_service.ingest.counters import IngestCounters
from master_service.state import IDLE_READER_S, ClusterState
from master_service.web import prometheus
from master_service.web.prometheus import (
    NODE_READER,
    MasterMetrics,
    NodeExposition,
    node_exposition,
)
from tests.unit.test_incremental_listing import Fleet
from tests.unit.test_prometheus_node_text import old_text


def full_text(state: ClusterState) -> bytes:
    """Every node written now: what a text built from scratch holds."""
    return node_exposition(state.facts()[2])


def builds(state: ClusterState, kind: str) -> int:
    return state.builds[NODE_READER, kind]


def exporter(fleet: Fleet) -> MasterMetrics:
    return MasterMetrics(fleet.state, IngestCounters(fleet.clock), clock=fleet.clock)


@pytest.mark.parametrize("seed", range(4))
def test_each_commit_gives_the_text_written_from_scratch(seed: int) -> None:
    fleet = Fleet(seed)
    state = fleet.state
    metrics = exporter(fleet)
    assert metrics.node_text() == old_text(state)
    for step in range(60):
        nodes_changed = fleet.step()
        if fleet.rng.random() < 0.3:
            fleet.clock.now += fleet.rng.uniform(0.5, 45.0)  # some go stale
        fleet.commit()
        full, incremental = builds(state, "full"), builds(state, "incremental")

        text = metrics.node_text()
        assert text == full_text(state)
        if step % 15 == 0:
            assert text == old_text(state)
        assert builds(state, "full") == full + nodes_changed
        assert builds(state, "incremental") == incremental + (not nodes_changed)


def test_the_text_is_kept_until_a_commit_and_nodes_turning_stale_are_written_again() -> None:
    fleet = Fleet(seed=2, nodes=40, intervals=(10,))
    state = fleet.state
    metrics = exporter(fleet)
    first = metrics.node_text()
    fleet.clock.now += 5.0
    for node in fleet.ids()[::2]:
        fleet.metrics(node)
    fleet.deliver()
    assert metrics.node_text() is first  # handled, not committed

    fleet.commit()
    assert metrics.node_text() == full_text(state) != first
    fleet.clock.now += 26.0  # past 3 intervals for the nodes not heard again
    text = metrics.node_text()

    assert text == full_text(state)
    for node in fleet.ids()[1::2]:
        assert f'picluster_node_state{{node="{node}",state="stale"}} 1.0\n'.encode() in text
    for node in fleet.ids()[::2]:
        assert f'picluster_node_up{{node="{node}"}} 1.0\n'.encode() in text
    assert (builds(state, "full"), builds(state, "incremental")) == (1, 2)


def test_an_unread_exposition_is_dropped_and_the_next_one_written_in_full() -> None:
    fleet = Fleet(seed=4, nodes=20)
    state = fleet.state
    metrics = exporter(fleet)
    metrics.node_text()
    fleet.metrics(fleet.pick())
    fleet.commit()
    metrics.node_text()
    assert (builds(state, "full"), builds(state, "incremental")) == (1, 1)

    fleet.clock.now += IDLE_READER_S + 1  # no scrape for five minutes
    fleet.metrics(fleet.pick())
    fleet.commit()

    assert metrics.node_text() == full_text(state)
    assert (builds(state, "full"), builds(state, "incremental")) == (2, 1)


def test_a_failed_write_leaves_the_next_text_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(seed=6, nodes=20)
    state = fleet.state
    metrics = exporter(fleet)
    metrics.node_text()
    fleet.metrics(fleet.pick())
    fleet.commit()

    def failing(read: object) -> NodeExposition:
        raise MemoryError("no room for the text")

    with monkeypatch.context() as patched:
        patched.setattr(prometheus, "update_exposition", failing)
        with pytest.raises(MemoryError):
            metrics.node_text()

    assert metrics.node_text() == full_text(state)  # the change it had taken is not lost


def test_scrapes_racing_a_busy_ingest_still_end_on_the_text_written_from_scratch() -> None:
    fleet = Fleet(seed=14, nodes=200)
    state = fleet.state
    metrics = exporter(fleet)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                text = metrics.node_text()
                assert text.count(b"picluster_node_up{") == 200
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch every 10 us, not 5 ms: races show far more
    for scraper in scrapers:
        scraper.start()
    try:
        for _ in range(100):
            for node in fleet.rng.sample(fleet.ids(), 10):
                fleet.metrics(node)
            fleet.commit()
    finally:
        stop.set()
        for scraper in scrapers:
            scraper.join()
        sys.setswitchinterval(interval)

    assert not errors
    assert metrics.node_text() == full_text(state)
    assert builds(state, "incremental") > builds(state, "full")
