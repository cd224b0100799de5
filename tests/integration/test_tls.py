"""mqtts:// end to end with certificates the test makes; untrusted certificates fail clearly."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from master_service.state import NodeView
from node_publisher.app import NodeAgent
from node_publisher.settings import load_settings
from tests.conftest import REPO_ROOT
from tests.integration.test_hostile_input import running_master
from tests.support.broker import MosquittoBroker
from tests.support.certs import TestPki, make_pki
from tests.support.waiting import wait_until

MASTER_PASSWORD = "master-tls-secret"
NODE_PASSWORD = "node-tls-secret"


# paho leaves the socket of a failed TLS handshake to the garbage collector (paho-mqtt 2.2,
# Client._ssl_wrap_socket): its ResourceWarning is paho's, not a failure of ours.
PAHO_LEAKS_FAILED_TLS_SOCKET = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(
    make_broker: Callable[..., MosquittoBroker], pki: TestPki
) -> tuple[MosquittoBroker, str]:
    """A broker with users, the shipped ACL and a TLS listener; the node id it admits."""
    node_id = f"tls-{uuid.uuid4().hex[:6]}"
    broker = make_broker(
        users={"picluster-master": MASTER_PASSWORD, node_id: NODE_PASSWORD},
        acl=(REPO_ROOT / "mosquitto" / "acl").read_text(),
        tls_listener=pki.tls_listener(),
    )
    return broker, node_id


@pytest.fixture
def agents() -> Iterator[list[NodeAgent]]:
    started: list[NodeAgent] = []
    yield started
    for agent in started:
        agent.stop(timeout_s=0.5)


def start_agent(
    agents: list[NodeAgent], url: str, node_id: str, state_dir: Path, ca_file: Path
) -> NodeAgent:
    settings = load_settings(
        [
            *("--broker", url, "--node-id", node_id, "--interval", "0.2"),
            *("--state-dir", str(state_dir), "--ca-file", str(ca_file)),
        ],
        {"CLUSTER_PASSWORD": NODE_PASSWORD},
    )
    agent = NodeAgent(settings)
    agents.append(agent)
    agent.start()
    return agent


def tls_url(broker: MosquittoBroker, user: str = "") -> str:
    return f"mqtts://{user + '@' if user else ''}127.0.0.1:{broker.tls_port}"


def test_node_and_master_both_over_tls(
    tls_broker: tuple[MosquittoBroker, str],
    pki: TestPki,
    tmp_path: Path,
    agents: list[NodeAgent],
) -> None:
    broker, node_id = tls_broker
    with running_master(
        tls_url(broker, "picluster-master"),
        tmp_path,
        password=MASTER_PASSWORD,
        ca_file=str(pki.ca_cert),
    ) as master:
        agent = start_agent(agents, tls_url(broker), node_id, tmp_path / "node", pki.ca_cert)
        assert agent.wait_ready(10)
        view = cast(
            NodeView,
            wait_until(
                lambda: (v := master.state.view(node_id)) and v["metrics"] and v["details"] and v,
                message="the node's metrics at the master over TLS",
            ),
        )
        assert view["state"] == "online"
        assert view["counters"]["seq_gaps"] == 0
        # Only TLS speaks on that port, so getting here means both used TLS.
        assert agent.settings.address.tls
        assert master.settings.broker_address.tls


@PAHO_LEAKS_FAILED_TLS_SOCKET
def test_node_refuses_a_broker_whose_certificate_it_cannot_verify(
    tls_broker: tuple[MosquittoBroker, str],
    pki: TestPki,
    tmp_path: Path,
    agents: list[NodeAgent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="node_publisher.app")
    broker, node_id = tls_broker
    agent = start_agent(agents, tls_url(broker), node_id, tmp_path / "node", pki.other_ca_cert)
    line = wait_until(
        lambda: next((r for r in caplog.records if "not trusted" in r.getMessage()), None),
        message="a log line naming the untrusted certificate",
    )
    assert line.levelno == logging.ERROR
    assert "ca_file" in line.getMessage()
    assert "certificate verify failed" in line.getMessage() or "self" in line.getMessage()
    assert not agent.connected
    assert not any(r.exc_info for r in caplog.records), "a clear line, not a traceback"


@PAHO_LEAKS_FAILED_TLS_SOCKET
def test_master_names_an_untrusted_certificate(
    tls_broker: tuple[MosquittoBroker, str],
    pki: TestPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from master_service.app import build
    from master_service.settings import MasterSettings

    caplog.set_level(logging.ERROR, logger="master_service.ingest.listener")
    broker, _ = tls_broker
    settings = MasterSettings(
        broker=tls_url(broker, "picluster-master"),
        db=str(tmp_path / "m.db"),
        password=MASTER_PASSWORD,
        ca_file=str(pki.other_ca_cert),
        ha_discovery=False,
    )
    service = build(settings)
    service.start()
    try:
        line = wait_until(
            lambda: next((r for r in caplog.records if "not trusted" in r.getMessage()), None),
            message="the master's log line naming the certificate",
        )
        assert "ca_file" in line.getMessage()
        assert MASTER_PASSWORD not in line.getMessage()
        assert not service.listener.connected.is_set()
    finally:
        service.stop()


def run_say(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node_publisher", "say", "hello", "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_cli_says_why_tls_failed_without_a_traceback(
    tls_broker: tuple[MosquittoBroker, str], pki: TestPki, tmp_path: Path
) -> None:
    broker, node_id = tls_broker
    common = ["--broker", tls_url(broker), "--node-id", node_id, "--state-dir", str(tmp_path)]
    env = {"CLUSTER_PASSWORD": NODE_PASSWORD}
    untrusted = run_say(*common, "--ca-file", str(pki.other_ca_cert), env=env)
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
    trusted = run_say(*common, "--ca-file", str(pki.ca_cert), env=env)
    assert trusted.returncode == 0, trusted.stderr


def test_plain_client_on_the_tls_port_is_not_admitted(
    tls_broker: tuple[MosquittoBroker, str], tmp_path: Path
) -> None:
    broker, node_id = tls_broker
    url = f"mqtt://127.0.0.1:{broker.tls_port}"
    result = run_say(
        "--broker", url, "--node-id", node_id, "--state-dir", str(tmp_path), "--timeout", "1",
        env={"CLUSTER_PASSWORD": NODE_PASSWORD},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
