"""A password written into the broker URL logs in, and shows in no log line, on both sides."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from node_publisher.app import NodeAgent
from node_publisher.settings import load_settings
from tests.support.broker import MosquittoBroker
from tests.support.waiting import wait_until

SECRET = "url-Pa55-never-logged"


def test_node_logs_in_with_a_url_password_and_never_logs_it(
    make_broker: Callable[..., MosquittoBroker], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node_id = f"secret-{uuid.uuid4().hex[:6]}"
    broker = make_broker(users={node_id: SECRET})
    caplog.set_level(logging.DEBUG)
    url = f"mqtt://{node_id}:{SECRET}@{broker.host}:{broker.port}"
    settings = load_settings(
        ["--broker", url, "--node-id", node_id, "--state-dir", str(tmp_path), "--interval", "0.2"],
        {},
    )
    agent = NodeAgent(settings)
    agent.start()
    try:
        assert agent.wait_ready(10), "the password taken from the URL did not log the node in"
    finally:
        agent.stop(timeout_s=1.0)
    assert f"mqtt://{node_id}@{broker.host}:{broker.port}" in caplog.text  # the URL is logged
    assert SECRET not in caplog.text
    assert SECRET not in repr(settings)


def test_master_logs_in_with_a_url_password_and_never_logs_it(
    make_broker: Callable[..., MosquittoBroker], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from master_service.app import build
    from master_service.settings import parse_settings

    broker = make_broker(users={"picluster-master": SECRET})
    caplog.set_level(logging.DEBUG)
    url = f"mqtt://picluster-master:{SECRET}@{broker.host}:{broker.port}"
    settings = parse_settings(
        ["--broker", url, "--db", str(tmp_path / "m.db"), "--no-ha-discovery",
         "--client-id", f"secret-master-{uuid.uuid4().hex[:6]}"],
        {},
    )  # fmt: skip
    service = build(settings)
    service.start()
    try:
        wait_until(service.listener.connected.is_set, message="the master logged in")
    finally:
        service.stop()
    assert f"connecting to mqtt://picluster-master@{broker.host}:{broker.port}" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(settings)
    assert SECRET not in settings.broker
