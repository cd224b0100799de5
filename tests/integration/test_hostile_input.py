"""Hostile and broken input over a real broker to a real master: dropped, counted, contained.

Every case goes through Mosquitto to an in-process `MasterService`, followed by a valid
envelope that must still land; the node's state must show only the valid traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, MessageType, encode_envelope
from master_service.app import MasterService, build
from master_service.ingest import router
from master_service.ingest.handlers import Context, Incoming
from master_service.settings import MasterSettings
from master_service.state import NodeView
from tests.support.broker import MosquittoBroker
from tests.support.processes import master_database
from tests.support.waiting import wait_until

NODE = "hostile-pi"
DETAILS = {"hostname": NODE, "cpu_percent_used": 1.0, "ram": 1 << 30, "cpu": "arm", "cpu_cores": 4}


@contextmanager
def running_master(
    broker_url: str, workdir: Path, reraise: bool = True, **options: Any
) -> Iterator[MasterService]:
    """An in-process master connected to the broker; its handler errors re-raise by default."""
    database = master_database(workdir / f"master-{uuid.uuid4().hex[:6]}")
    settings = MasterSettings(
        broker=broker_url,
        db=database.target,
        db_password=database.env.get("CLUSTER_DB_PASSWORD"),
        client_id=options.pop("client_id", f"test-master-{uuid.uuid4().hex[:8]}"),
        ha_discovery=False,
        **options,
    )
    service = build(settings)
    service.ctx.reraise_handler_errors = reraise
    service.start()
    try:
        if not service.listener.connected.wait(10):
            raise AssertionError("the master did not connect to the broker")
        yield service
    finally:
        service.stop()


class RawPublisher:
    """A plain MQTT 5 client that publishes any bytes at QoS 1 and waits for the PUBACK."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=tls_ca)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError("publisher could not connect")

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish and wait for the broker's PUBACK."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def envelope(
    message_type: str = "metrics", seq: int = 1, payload: Any = None, node: str = NODE, **extra: Any
) -> dict[str, Any]:
    """A valid envelope as a dict (to be broken by a case)."""
    if payload is None:
        payload = {"cpu_percent": float(seq)}
    data = {"v": 1, "type": message_type, "node": node, "ts": 1.7e9 + seq, "seq": seq}
    data["payload"] = payload
    data.update(extra)
    return data


def api_get(master: MasterService, path: str) -> httpx.Response:
    """One request to the master's API, in-process (no HTTP server needed)."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=master.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://master") as client:
            return await client.get(path)

    return asyncio.run(get())


def encoded(data: Any) -> bytes:
    return json.dumps(data).encode()


def metrics_bytes(seq: int, node: str = NODE, ts: float = 1.7e9) -> bytes:
    return encode_envelope(Envelope("metrics", node, ts, seq, {"cpu_percent": seq}))


@dataclass(frozen=True)
class Case:
    """One hostile message; `cause` None means the contract accepts it."""

    name: str
    topic: str
    payload: bytes | Callable[[int], bytes]  # a callable gets a fresh seq (accepted cases)
    cause: str | None
    retain: bool = False

    def data(self) -> bytes:
        """The bytes to send."""
        return self.payload if isinstance(self.payload, bytes) else self.payload(Seq.next())


class Seq:
    """The next valid seq for NODE across the module's tests (one master sees them all)."""

    value = 100

    @classmethod
    def next(cls) -> int:
        """A seq the master has not seen from NODE."""
        cls.value += 1
        return cls.value


T = f"cluster/{NODE}"
DEEP = b'{"v":1,"payload":' * 40 + b"1" + b"}" * 40
CASES = [
    Case("not json", f"{T}/metrics", b"cpu=12;mem=40", "not_json"),
    Case("not utf-8", f"{T}/metrics", b'{"v":1,"type":"metrics","x":"\xff\xfe"}', "not_utf8"),
    Case("lone surrogate", f"{T}/metrics", encoded(envelope(payload={"x": "\ud800"})), "not_utf8"),
    Case("json array", f"{T}/metrics", b"[1,2,3]", "not_object"),
    Case("json scalar", f"{T}/metrics", b"42", "not_object"),
    Case("missing keys", f"{T}/metrics", b'{"v":1,"type":"metrics"}', "missing_key"),
    Case("type not topic", f"{T}/metrics", encoded(envelope("status")), "type_mismatch"),
    Case("spoofed node", f"{T}/metrics", encoded(envelope(node="victim-pi")), "node_mismatch"),
    Case("unsupported v", f"{T}/metrics", encoded({**envelope(), "v": 2}), "bad_version"),
    Case("seq wrong type", f"{T}/metrics", encoded({**envelope(), "seq": "7"}), "bad_field"),
    Case("ts wrong type", f"{T}/metrics", encoded({**envelope(), "ts": "noon"}), "bad_field"),
    Case(
        "NaN",
        f"{T}/metrics",
        b'{"v":1,"type":"metrics","payload":{"cpu_percent":NaN}}',
        "not_finite",
    ),
    Case("Infinity", f"{T}/metrics", encoded(envelope(payload={"x": float("inf")})), "not_finite"),
    Case(
        "1e400",
        f"{T}/metrics",
        encoded(envelope(payload={"x": 1})).replace(b'"x": 1', b'"x": 1e400'),
        "not_finite",
    ),
    Case("deep nesting", f"{T}/metrics", DEEP, "too_deep"),
    Case(
        "oversize",
        f"{T}/message",
        encoded(envelope("message", payload="x" * (66 * 1024))),
        "oversize",
    ),
    Case("too few levels", f"cluster/{NODE}", metrics_bytes(1), "bad_topic"),
    Case("too many levels", f"{T}/metrics/extra", metrics_bytes(1), "bad_topic"),
    Case("reserved node id", "cluster/_root/metrics", metrics_bytes(1, "_root"), "reserved_node"),
    Case("invalid node id", "cluster/Bad.Node/metrics", b"{}", "bad_node_id"),
    Case("empty retained", f"{T}/status", b"", "empty", retain=True),
    Case("unknown type", f"{T}/firmware", encoded(envelope("firmware")), "unknown_type"),
    Case(
        "bad payload",
        f"{T}/metrics",
        encoded(envelope(payload={"cpu_percent": "hot"})),
        "bad_payload",
    ),
    Case(
        "unknown extra keys",
        f"{T}/metrics",
        lambda seq: encoded({**envelope(seq=seq), "future": [1]}),
        None,
    ),
    Case(
        "legacy two-key form",
        f"{T}/metrics",
        encoded({"type": "metrics", "payload": {"cpu_percent": 3}}),
        None,
    ),
]


@pytest.fixture(scope="module")
def master(broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One master for the whole table (each case checks its own deltas)."""
    with running_master(broker.url, tmp_path_factory.mktemp("hostile")) as service:
        yield service


@pytest.fixture(scope="module")
def publisher(broker: MosquittoBroker) -> Iterator[RawPublisher]:
    sender = RawPublisher(broker.host, broker.port)
    yield sender
    sender.close()


@pytest.fixture(autouse=True)
def handler_errors_fail_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Handler errors re-raise (and fail the test) unless it is marked allow_handler_errors."""
    if "master" not in request.fixturenames:
        yield
        return
    service: MasterService = request.getfixturevalue("master")
    allowed = request.node.get_closest_marker("allow_handler_errors") is not None
    service.ctx.reraise_handler_errors = not allowed
    service.ingestor.crashes.clear()
    yield
    crashes, service.ctx.reraise_handler_errors = list(service.ingestor.crashes), True
    assert not crashes, f"a handler raised: {crashes!r}"


def send_valid(publisher: RawPublisher, master: MasterService) -> tuple[int, float, NodeView]:
    """Send the next valid metrics envelope and wait until the master applied it."""
    seq, ts = Seq.next(), time.time()
    publisher.send(f"{T}/metrics", metrics_bytes(seq, ts=ts))
    view = wait_until(
        lambda: v if (v := master.state.view(NODE)) and v["counters"]["last_seq"] == seq else None,
        message=f"seq {seq} applied",
    )
    return seq, ts, view


def without_clock(view: NodeView) -> dict[str, object]:
    return {k: v for k, v in view.items() if k not in ("last_seen", "state")}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_message(
    case: Case,
    master: MasterService,
    publisher: RawPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    _, _, before = send_valid(publisher, master)
    counters_before = master.counters.snapshot()
    nodes_before = set(master.state.node_ids())

    publisher.send(case.topic, case.data(), retain=case.retain)
    seq, ts, after = send_valid(publisher, master)

    counters = master.counters.snapshot()
    rejected = {
        cause: n - counters_before["rejected"].get(cause, 0)
        for cause, n in counters["rejected"].items()
        if n != counters_before["rejected"].get(cause, 0)
    }
    assert set(master.state.node_ids()) == nodes_before, "no node appears from bad input"
    if case.cause is None:
        assert rejected == {}
        assert counters["accepted"] - counters_before["accepted"] == 2
        assert after["counters"]["received"] == before["counters"]["received"] + 2
    else:
        assert rejected == {case.cause: 1}
        assert counters["accepted"] - counters_before["accepted"] == 1
        # Only the valid envelope that followed changed the node.
        expected = without_clock(before)
        expected["metrics"] = {"cpu_percent": seq}
        expected["metrics_ts"] = ts
        expected["counters"] = {
            **before["counters"],
            "received": before["counters"]["received"] + 1,
            "last_seq": seq,
        }
        assert without_clock(after) == expected
        warnings = [
            r.getMessage() for r in caplog.records if r.name == "master_service.ingest.counters"
        ]
        # One clear line per cause; a cause already warned about in the last 10 s stays quiet.
        assert len(warnings) <= 1
        if warnings:
            assert f"[{case.cause}]" in warnings[0]
            assert case.topic in warnings[0]
    assert after["counters"]["seq_gaps"] == 0
    assert after["counters"]["duplicates"] == 0


def test_every_cause_is_in_the_api_and_the_master_still_serves(
    master: MasterService, publisher: RawPublisher
) -> None:
    for case in CASES:
        publisher.send(case.topic, case.data(), retain=case.retain)
    send_valid(publisher, master)
    rejected = api_get(master, "/api/cluster").json()["master"]["rejected"]
    for cause in {c.cause for c in CASES if c.cause}:
        assert rejected.get(cause, 0) >= 1, cause
    node = api_get(master, f"/api/nodes/{NODE}")
    assert node.status_code == 200
    assert node.json()["counters"]["seq_gaps"] == 0
    assert api_get(master, "/api/nodes").status_code == 200
    assert api_get(master, "/healthz").json()["mqtt_connected"] is True


def test_a_flood_logs_a_few_lines_not_a_thousand(
    master: MasterService, publisher: RawPublisher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = master.counters.snapshot()["rejected"].get("not_json", 0)
    for i in range(1000):
        publisher.client.publish(f"{T}/metrics", b"garbage %d" % i, qos=1)
    send_valid(publisher, master)
    assert master.counters.snapshot()["rejected"]["not_json"] - before == 1000
    lines = [r for r in caplog.records if r.name == "master_service.ingest.counters"]
    assert len(lines) <= 2


def failing_message_handler(incoming: Incoming, ctx: Context) -> None:
    if incoming.envelope.payload == "boom":
        raise RuntimeError("handler bug")
    HANDLERS[MessageType.MESSAGE](incoming, ctx)


HANDLERS = router.HANDLERS


@pytest.mark.allow_handler_errors
def test_a_failing_handler_is_isolated(
    master: MasterService,
    publisher: RawPublisher,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A test-only route: the real table with a `message` handler that raises on "boom".
    monkeypatch.setattr(
        router, "HANDLERS", {**HANDLERS, MessageType.MESSAGE: failing_message_handler}
    )
    caplog.set_level(logging.ERROR)
    errors_before = master.counters.snapshot()["handler_errors"]
    messages_before = master.state.view(NODE) or {"counters": {"messages": 0}}
    boom = encode_envelope(Envelope("message", NODE, 1.7e9, Seq.next(), "boom"))
    fine = encode_envelope(Envelope("message", NODE, 1.7e9, Seq.next(), "fine"))
    publisher.send(f"{T}/message", boom)
    publisher.send(f"{T}/message", fine)
    send_valid(publisher, master)
    assert master.counters.snapshot()["handler_errors"] == errors_before + 1
    view = master.state.view(NODE)
    assert view is not None
    assert view["counters"]["messages"] == messages_before["counters"]["messages"] + 1
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1
    assert f"{T}/message" in failures[0].getMessage()
