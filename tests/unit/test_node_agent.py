"""NodeAgent without a broker: spooling, the dropped count, oversize refusal, seq on status."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from cluster_protocol import EnvelopeError, decode_envelope
from node_publisher.app import NodeAgent
from node_publisher.settings import load_settings
from tests.unit.test_node_collectors import FakePs


def make_agent(tmp_path: Path, spool_max: int = 100) -> NodeAgent:
    settings = load_settings(
        ["--node-id", "u1", "--state-dir", str(tmp_path), "--spool-max", str(spool_max)], {}
    )
    return NodeAgent(settings, ps=FakePs(), clock=lambda: 1_700_000_000.0)


def spooled_payloads(agent: NodeAgent) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in agent.spool.pending(0, 1000)]


def test_metrics_are_spooled_as_valid_envelopes_with_consecutive_seqs(tmp_path):
    agent = make_agent(tmp_path)
    assert [agent.sample_once() for _ in range(3)] == [1, 2, 3]
    for entry in agent.spool.pending(0, 10):
        assert entry.topic == "cluster/u1/metrics"
        envelope = decode_envelope(entry.data, "u1", "metrics", 0.0)
        assert envelope.ts == 1_700_000_000.0
        assert envelope.payload["spool_dropped"] == 0


def test_a_full_spool_reports_what_it_dropped_in_the_next_metrics(tmp_path):
    agent = make_agent(tmp_path, spool_max=3)
    for _ in range(5):
        agent.sample_once()
    envelopes = spooled_payloads(agent)
    assert [e["seq"] for e in envelopes] == [3, 4, 5]  # oldest dropped first
    assert envelopes[-1]["payload"]["spool_dropped"] == 1  # seq 1 went when seq 4 came
    agent.sample_once()
    assert spooled_payloads(agent)[-1]["payload"]["spool_dropped"] == 1  # seq 2, at seq 5


def test_an_oversize_message_takes_no_seq_and_is_not_spooled(tmp_path):
    agent = make_agent(tmp_path)
    with pytest.raises(EnvelopeError):
        agent.publish_message("z" * 70_000)
    assert agent.publish_message("fits") == 1
    assert [e["payload"] for e in spooled_payloads(agent)] == ["fits"]


def test_status_carries_the_current_seq_without_taking_one(tmp_path):
    agent = make_agent(tmp_path)
    agent.sample_once()
    status = decode_envelope(agent.emitter.status_payload("offline"), "u1", "status", 0.0)
    assert (status.seq, status.payload) == (1, {"state": "offline"})
    assert agent.sample_once() == 2


class GrowingPs(FakePs):
    """A machine whose core count can change under the agent (a stand-in for any detail)."""

    cores = 4

    def cpu_count(self, logical: bool = True) -> int:
        return self.cores


def test_details_are_rebuilt_on_their_own_cadence_to_spot_a_change(tmp_path):
    ps = GrowingPs()

    def agent(name: str, every_s: float) -> NodeAgent:
        args = ["--node-id", name, "--state-dir", str(tmp_path / name)]
        return NodeAgent(load_settings(args, {}), ps=ps, details_check_every_s=every_s)

    eager, lazy = agent("eager", 0.0), agent("lazy", 3600.0)
    eager.sample_once()
    lazy.sample_once()
    ps.cores = 8
    eager.sample_once()
    lazy.sample_once()
    assert eager.details is not None
    assert eager.details["cpu_cores"] == 8
    assert lazy.details is not None
    assert lazy.details["cpu_cores"] == 4  # seen at the next check, within the hour


def test_set_interval_starts_a_new_schedule_and_the_details_carry_it(tmp_path):
    agent = make_agent(tmp_path)  # configured for 10 s: no tick would come within the test
    ticked = threading.Event()
    agent.sampler.prime()
    agent.sampler.start(ticked.set)
    try:
        agent.set_interval(0.05)
        assert ticked.wait(5), "the new interval did not take effect"
        assert agent.interval == 0.05
        assert agent.details is not None
        assert agent.details["interval_s"] == 0.05
    finally:
        agent.sampler.stop()
    with pytest.raises(ValueError, match="interval must be > 0"):
        agent.set_interval(0)


def test_a_failing_sample_does_not_stop_the_schedule(tmp_path):
    agent = make_agent(tmp_path)
    calls: list[int] = []
    second = threading.Event()

    def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("sensor gone")
        second.set()

    agent.sampler.set_interval(0.02)
    agent.sampler.start(tick)
    try:
        assert second.wait(5)
    finally:
        agent.sampler.stop()
