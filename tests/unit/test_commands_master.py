"""The master's command service and control API without a broker: replies, timeouts, tokens."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cluster_protocol import MAX_MESSAGE_BYTES
from master_service.auth.accounts import Accounts
from master_service.cli import parse_command_args
from master_service.control.commands import CommandRefusedError, CommandService
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.ingestor import Ingestor
from master_service.state import ClusterState, NodeStatus
from master_service.storage.command_log import CommandLog
from master_service.storage.store import Store, connect
from master_service.web.access import Access
from master_service.web.control import control_router
from tests.support.waiting import wait_until

NOW = 1_700_000_000.0


class FakeBroker:
    """Stands in for listener.publish: records commands and lets a 'node' answer them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int, bool]] = []
        self.answer: Callable[[str, dict[str, Any]], None] | None = None

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        body = json.loads(payload)
        self.sent.append((topic, body, qos, retain))
        if self.answer is not None:
            answer = self.answer
            threading.Thread(target=answer, args=(topic, body)).start()


def make_state(**nodes: str) -> ClusterState:
    state = ClusterState(lambda: NOW)
    with state.lock:
        for node, status in nodes.items():
            record = state.node(node)
            record.status = status
            record.last_heard = NOW
    return state


class Master:
    """The store, its writer thread and the command service, as the master wires them."""

    def __init__(self, target: str, publish: FakeBroker, state: ClusterState, up: bool = True):
        self.store = Store(target)
        self.ingestor = Ingestor(Context(state, IngestCounters()), self.store)
        log = CommandLog(self.store, self.ingestor.write)
        self.commands = CommandService(log, publish, state, lambda: up, "cluster")
        self.ingestor.start()

    def close(self) -> None:
        self.ingestor.stop()
        self.commands.close()
        self.store.close()


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def service(db_target: str, broker: FakeBroker) -> Iterator[CommandService]:
    state = make_state(n1=NodeStatus.ONLINE, n2=NodeStatus.ONLINE, gone=NodeStatus.OFFLINE)
    master = Master(db_target, broker, state)
    yield master.commands
    master.close()


def test_a_command_is_published_once_at_qos1_never_retained_with_an_expiry(service, broker):
    broker.answer = lambda topic, body: service.node_reply(
        "n1", {"id": body["id"], "ok": True, "result": {"pong": 1}, "error": None}
    )
    record = service.send("n1", "ping", {}, timeout_s=5)
    ((topic, body, qos, retain),) = broker.sent
    assert (topic, qos, retain) == ("cluster/n1/cmd/ping", 1, False)
    assert set(body) == {"id", "args", "expires"}
    assert body["expires"] == pytest.approx(record.sent_at + 5)
    assert (record.status, record.ok, record.result) == ("ok", True, {"pong": 1})


def test_an_error_reply_is_kept_with_its_message(service, broker):
    broker.answer = lambda topic, body: service.node_reply(
        "n1", {"id": body["id"], "ok": False, "result": None, "error": "unknown command"}
    )
    record = service.send("n1", "frobnicate", timeout_s=5)
    assert (record.status, record.ok, record.error) == ("error", False, "unknown command")


def test_no_reply_is_a_timeout_and_a_late_reply_is_still_kept(service, broker):
    record = service.send("n1", "ping", timeout_s=0.2)
    assert (record.status, record.ok) == ("timeout", None)
    service.node_reply("n1", {"id": record.id, "ok": True, "result": "late", "error": None})
    wait_until(lambda: service.recent("n1")[0].status == "ok", message="the late reply stored")
    (latest,) = service.recent("n1")
    assert (latest.status, latest.result) == ("ok", "late")


def test_a_node_cannot_answer_another_nodes_command(service, broker):
    broker.answer = lambda topic, body: service.node_reply(
        "n2", {"id": body["id"], "ok": True, "result": "spoof", "error": None}
    )
    record = service.send("n1", "ping", timeout_s=0.3)
    assert record.status == "timeout"
    assert record.result is None


def test_the_first_reply_wins(service, broker):
    record = service.send("n1", "ping", timeout_s=0.1)
    service.node_reply("n1", {"id": record.id, "ok": True, "result": 1, "error": None})
    service.node_reply("n1", {"id": record.id, "ok": False, "result": 2, "error": "again"})
    wait_until(lambda: service.recent("n1")[0].status == "ok", message="the reply stored")
    assert service.recent("n1")[0].result == 1


@pytest.mark.parametrize(
    ("node", "command", "status"),
    [("nope", "ping", 404), ("gone", "ping", 409), ("n1", "Bad/Name", 422), ("n1", "", 422)],
)
def test_commands_that_cannot_arrive_are_refused_before_publishing(
    service, broker, node, command, status
):
    with pytest.raises(CommandRefusedError) as caught:
        service.send(node, command, timeout_s=1)
    assert caught.value.status == status
    assert broker.sent == []


def test_a_reply_that_breaks_the_contract_is_ignored(service, broker, caplog):
    broker.answer = lambda topic, body: service.node_reply(
        "n1", {"id": body["id"], "ok": "yes", "result": None, "error": None}
    )
    record = service.send("n1", "ping", timeout_s=0.3)
    assert (record.status, record.ok) == ("timeout", None)
    assert "ignoring a bad reply from n1" in caplog.text


def test_a_command_too_large_is_413_and_args_not_json_are_422_neither_published(service, broker):
    with pytest.raises(CommandRefusedError) as too_large:
        service.send("n1", "run", {"blob": "x" * MAX_MESSAGE_BYTES}, timeout_s=1)
    assert too_large.value.status == 413
    with pytest.raises(CommandRefusedError) as not_json:
        service.send("n1", "run", {"n": float("nan")}, timeout_s=1)
    assert not_json.value.status == 422
    assert broker.sent == []


def test_not_connected_to_the_broker_is_refused(tmp_path, broker):
    state = make_state(n1=NodeStatus.ONLINE)
    master = Master(str(tmp_path / "m.db"), broker, state, up=False)
    with pytest.raises(CommandRefusedError) as caught:
        master.commands.send("n1", "ping", timeout_s=1)
    assert caught.value.status == 503
    master.close()


def test_history_is_newest_first_survives_a_restart_and_goes_with_forget(db_target, broker):
    state = make_state(n1=NodeStatus.ONLINE)
    first = Master(db_target, broker, state)
    ids = [first.commands.send("n1", name, timeout_s=0.05).id for name in ("ping", "refresh")]
    first.close()
    second = Master(db_target, broker, state)
    assert [r.id for r in second.commands.recent("n1")] == ids[::-1]
    second.commands.node_forgotten("n1")
    wait_until(lambda: second.commands.recent("n1") == [], message="the commands forgotten")
    second.close()


def test_cli_args_are_json_when_they_parse_and_text_otherwise():
    assert parse_command_args(["interval_s=5", "task=disk", 'args={"mount": "/"}', "x=a=b"]) == {
        "interval_s": 5,
        "task": "disk",
        "args": {"mount": "/"},
        "x": "a=b",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_command_args(["novalue"])


# -- the HTTP routes -----------------------------------------------------------------------


class Client:
    """Calls the routes in-process over ASGI (starlette's TestClient warns with this httpx)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                return await client.request(method, path, **options)

        return asyncio.run(call())

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def delete(self, path: str, **options: Any) -> httpx.Response:
        return self.request("DELETE", path, **options)


def client_for(commands: CommandService, token: str | None) -> Client:
    fake = SimpleNamespace(
        settings=SimpleNamespace(api_token=token),
        commands=commands,
        state=commands._state,
        forget=lambda node: node == "n1",
    )
    app = FastAPI()
    # No user exists: only the master's api_token can write (localhost, no login needed).
    access = Access(Accounts(lambda: connect(":memory:")), token, login_required=False)
    app.include_router(control_router(fake, access))  # a SimpleNamespace satisfies MasterPort
    return Client(app)


def test_with_a_token_configured_writes_need_it(service):
    client = client_for(service, "s3cret")
    body = {"command": "ping", "timeout_s": 0.1}
    assert client.post("/api/nodes/n1/commands", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/nodes/n1/commands", json=body, headers=wrong).status_code == 401
    assert client.delete("/api/nodes/n1").status_code == 401
    assert client.get("/api/nodes/n1/commands").status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    answer = client.post("/api/nodes/n1/commands", json=body, headers=good)
    assert answer.status_code == 504
    assert answer.json()["status"] == "timeout"
    assert client.delete("/api/nodes/n1", headers=good).json() == {"node": "n1", "forgotten": True}
    assert client.delete("/api/nodes/zz", headers=good).status_code == 404


def test_placement_needs_no_token_and_rejects_bad_sizes(service):
    client = client_for(service, "s3cret")
    assert client.post("/api/placement", json={"min_ram": "2 potatoes"}).status_code == 422
    answer = client.post("/api/placement", json={"min_ram": "1GiB"})
    assert answer.status_code == 200
    assert {r["node"] for r in answer.json()["rejected"]} == {"n1", "n2", "gone"}


def test_refusals_become_http_statuses(service):
    client = client_for(service, None)
    assert client.post("/api/nodes/gone/commands", json={"command": "ping"}).status_code == 409
    too_long = {"command": "ping", "timeout_s": 1000}
    assert client.post("/api/nodes/n1/commands", json=too_long).status_code == 422
