"""The mqtt5 ingest connection (`ingest_client = "mqtt5"`) against a real Mosquitto.

Each promise of the paho listener is checked again on the new path: the persistent session
and its queue across a master restart, Receive Maximum, PUBACK only after commit, keepalive
with PINGREQ, reconnects through broker restarts, kills and freezes, TLS and passwords with a
clear line for each refusal, and a malformed or unexpected packet closing the connection
with the right reason code (the bytes are slipped in by a relay, as Mosquitto never sends
them) without taking the master down.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mqtt5
import orjson
import pytest

from master_service.app import MasterService, build
from master_service.ingest.ingestor import FLUSH_EVERY_S
from master_service.ingest.mqtt5_listener import Mqtt5Listener
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings
from tests.integration.test_hostile_input import (
    CASES,
    Case,
    RawPublisher,
    metrics_bytes,
    send_valid,
)
from tests.support.broker import MosquittoBroker
from tests.support.certs import TestPki, make_pki
from tests.support.databases import MasterDatabase
from tests.support.mqtt_proxy import MqttProxy
from tests.support.processes import master_database
from tests.support.waiting import wait_until

LISTENER_LOG = "master_service.ingest.mqtt5_listener"
PASSWORD = "m5-master-secret"


def settings_for(
    url: str, workdir: Path, database: MasterDatabase | None = None, **options: Any
) -> MasterSettings:
    database = database or master_database(workdir / f"m5-{uuid.uuid4().hex[:6]}")
    return MasterSettings(
        broker=url,
        db=database.target,
        db_password=database.env.get("CLUSTER_DB_PASSWORD"),
        client_id=options.pop("client_id", f"m5-master-{uuid.uuid4().hex[:8]}"),
        ha_discovery=False,
        ingest_client="mqtt5",
        **options,
    )


def receiver_of(service: MasterService) -> Mqtt5Listener:
    receiver = service.receiver
    assert isinstance(receiver, Mqtt5Listener)
    return receiver


@contextmanager
def mqtt5_master(url: str, workdir: Path, **options: Any) -> Iterator[MasterService]:
    """An in-process master receiving on the mqtt5 connection, connected on both."""
    service = build(settings_for(url, workdir, **options))
    service.ctx.reraise_handler_errors = True
    service.start()
    try:
        wait_until(service._mqtt_connected, 15, message="both of the master's connections")
        yield service
    finally:
        service.stop()
    assert service.ingestor.crashes == []
    assert receiver_of(service).callback_errors == 0


def node_id() -> str:
    return f"m5-{uuid.uuid4().hex[:8]}"


def last_seq(service: MasterService, node: str) -> int | None:
    view = service.state.view(node)
    return view["counters"]["last_seq"] if view else None


def wait_seq(service: MasterService, node: str, seq: int, timeout_s: float = 15) -> None:
    wait_until(
        lambda: (last_seq(service, node) or 0) >= seq,
        timeout_s,
        message=f"{node} up to seq {seq} at the master",
    )


def send(publisher: RawPublisher, node: str, seqs: range) -> None:
    for seq in seqs:
        publisher.send(f"cluster/{node}/metrics", metrics_bytes(seq, node=node))


@pytest.fixture
def publisher(broker: MosquittoBroker) -> Iterator[RawPublisher]:
    sender = RawPublisher(broker.host, broker.port)
    yield sender
    sender.close()


def test_messages_are_stored_and_acknowledged_after_commit(
    broker: MosquittoBroker, publisher: RawPublisher, tmp_path: Path
) -> None:
    node = node_id()
    with mqtt5_master(broker.url, tmp_path) as master:
        send(publisher, node, range(1, 201))
        wait_seq(master, node, 200)
        receiver = receiver_of(master)
        wait_until(lambda: receiver.in_flight == 0, message="every PUBACK sent")
        view = master.state.view(node)
        assert view is not None
        assert view["counters"]["seq_gaps"] == 0
        assert view["metrics"] == {"cpu_percent": 200}
        assert master.health().ok
        assert receiver.connects == 1


def test_session_and_its_queue_survive_a_master_restart(
    broker: MosquittoBroker,
    publisher: RawPublisher,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LISTENER_LOG)
    node, client_id = node_id(), f"m5-session-{uuid.uuid4().hex[:6]}"
    database = master_database(tmp_path / "m")
    with mqtt5_master(broker.url, tmp_path, client_id=client_id, database=database) as master:
        send(publisher, node, range(1, 3))
        wait_seq(master, node, 2)
    # The master is away: the broker queues for its persistent session.
    send(publisher, node, range(3, 503))
    caplog.clear()
    with mqtt5_master(broker.url, tmp_path, client_id=client_id, database=database) as master:
        wait_seq(master, node, 502)
        view = master.state.view(node)
        assert view is not None
        assert view["counters"]["seq_gaps"] == 0
    assert any("session resumed" in r.getMessage() for r in caplog.records)


def test_receive_maximum_and_no_puback_before_commit(
    broker: MosquittoBroker, publisher: RawPublisher, tmp_path: Path
) -> None:
    node = node_id()
    with (
        MqttProxy(broker.port) as proxy,
        mqtt5_master(f"mqtt://127.0.0.1:{proxy.port}", tmp_path) as master,
    ):
        receiver = receiver_of(master)
        committed = master.ingestor.committed
        # The ingest thread cannot route (the cluster lock is ours), so nothing commits.
        with master.state.lock:
            send(publisher, node, range(1, 301))
            # Far beyond Mosquitto's default of 20 in flight: our Receive Maximum holds.
            # (>=: the retained messages of the session broker come too.)
            wait_until(lambda: receiver.in_flight >= 300, message="300 messages in flight")
            relay = proxy.latest(master.settings.client_id)
            assert relay is not None
            assert not any(isinstance(p, mqtt5.PubAckPacket) for p in relay.client_packets())
            assert master.ingestor.committed == committed
        wait_seq(master, node, 300)
        wait_until(lambda: receiver.in_flight == 0, message="the PUBACKs after the commit")
        acked = [p for p in relay.client_packets() if isinstance(p, mqtt5.PubAckPacket)]
        assert len(acked) >= 300


def test_a_broker_past_our_receive_maximum_costs_no_reconnect(
    broker: MosquittoBroker,
    publisher: RawPublisher,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Mosquitto 2.0 sends past a client's Receive Maximum when PUBACKs come in batches, as
    # commits release them (here up to 3 x a maximum of 200). Refusing that cost a reconnect
    # and a resend of everything in flight; every message must arrive once, on one connection.
    caplog.set_level(logging.INFO, logger=LISTENER_LOG)
    node, maximum, total = node_id(), 200, 5000
    received: list[RawMessage] = []
    lock = threading.Lock()
    stop = threading.Event()

    def take(messages: list[RawMessage]) -> None:
        with lock:
            received.extend(messages)

    def commit_every_flush() -> None:  # as the ingest thread's flushes release PUBACKs
        acknowledged = 0
        while not stop.wait(FLUSH_EVERY_S):
            with lock:
                count = len(received)
            receiver.acknowledge(count - acknowledged)
            acknowledged = count

    receiver = Mqtt5Listener(settings_for(broker.url, tmp_path), take, receive_maximum=maximum)
    committer = threading.Thread(target=commit_every_flush)
    receiver.start()
    committer.start()
    try:
        wait_until(receiver.connected.is_set, 15, message="the ingest connection")
        send(publisher, node, range(1, total + 1))
        ours = f"cluster/{node}/metrics"
        wait_until(
            lambda: sum(m.topic == ours for m in received) >= total,
            30,
            message="every message through a small Receive Maximum",
        )
    finally:
        stop.set()
        committer.join()
        receiver.stop()
    seqs = [orjson.loads(m.payload)["seq"] for m in received if m.topic == ours]
    assert seqs == list(range(1, total + 1)), "each message once, in order"
    assert receiver.connects == 1, f"reconnected (peak in flight {receiver.peak_in_flight})"
    assert not [r for r in caplog.records if "closing the ingest connection" in r.getMessage()]


def test_keepalive_sends_pingreq(
    make_broker: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    own = make_broker()
    with mqtt5_master(own.url, tmp_path, keepalive=1) as master:
        client_id = master.settings.client_id
        wait_until(
            lambda: f"Received PINGREQ from {client_id}\n" in own.log_path.read_text(),
            message="a PINGREQ in the broker's log",
        )
        assert receiver_of(master).connected.is_set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "sigkill"])
def test_reconnects_through_a_broker_restart_or_kill(
    make_broker: Callable[..., MosquittoBroker],
    tmp_path: Path,
    sig: signal.Signals,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LISTENER_LOG)
    own = make_broker(persistence=True)
    node = node_id()
    with mqtt5_master(own.url, tmp_path, keepalive=2) as master:
        receiver = receiver_of(master)
        sender = RawPublisher(own.host, own.port)
        send(sender, node, range(1, 11))
        sender.close()
        wait_seq(master, node, 10)
        own.restart(sig)
        wait_until(lambda: receiver.connects >= 2, 20, message="the ingest connection back")
        sender = RawPublisher(own.host, own.port)
        send(sender, node, range(11, 21))
        sender.close()
        wait_seq(master, node, 20)
        wait_until(master._mqtt_connected, message="both connections back")
    delays = [r for r in caplog.records if r.getMessage().startswith("reconnecting in")]
    assert delays, "a backoff before the reconnect"


def test_a_frozen_broker_is_found_by_the_keepalive(
    make_broker: Callable[..., MosquittoBroker],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER_LOG)
    own = make_broker()
    node = node_id()
    with mqtt5_master(own.url, tmp_path, keepalive=1) as master:
        receiver = receiver_of(master)
        assert own.process is not None
        own.process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: not receiver.connected.is_set(), 10, message="the freeze noticed")
        finally:
            own.process.send_signal(signal.SIGCONT)
        assert any("keepalive" in r.getMessage() for r in caplog.records)
        wait_until(receiver.connected.is_set, 30, message="reconnected after the thaw")
        sender = RawPublisher(own.host, own.port)
        send(sender, node, range(1, 4))
        sender.close()
        wait_seq(master, node, 3)


# A PUBLISH whose topic is not UTF-8; a packet of reserved type 0; a PUBREL (we get no QoS 2).
MALFORMED_TOPIC = b"\x30\x05\x00\x02\xff\xfe\x00"
RESERVED_TYPE = b"\x00\x00"
PUBREL = b"\x62\x02\x00\x01"
# mqtt5 0.8 reports the topic's UnicodeDecodeError as unraisable, then panics (pyo3's
# PanicException, which the listener catches): the warning is the codec's, not a failure.
CODEC_REPORTS_BAD_UTF8_AS_UNRAISABLE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(
            MALFORMED_TOPIC,
            mqtt5.DisconnectReasonCode.MALFORMED_PACKET,
            marks=CODEC_REPORTS_BAD_UTF8_AS_UNRAISABLE,
        ),
        (RESERVED_TYPE, mqtt5.DisconnectReasonCode.MALFORMED_PACKET),
        (PUBREL, mqtt5.DisconnectReasonCode.PROTOCOL_ERROR),
    ],
    ids=["bad-utf8-topic", "reserved-type", "unexpected-pubrel"],
)
def test_a_bad_packet_closes_with_its_reason_code_and_reconnects(
    broker: MosquittoBroker,
    publisher: RawPublisher,
    tmp_path: Path,
    data: bytes,
    reason: mqtt5.DisconnectReasonCode,
) -> None:
    node = node_id()
    with (
        MqttProxy(broker.port) as proxy,
        mqtt5_master(f"mqtt://127.0.0.1:{proxy.port}", tmp_path) as master,
    ):
        receiver = receiver_of(master)
        send(publisher, node, range(1, 6))
        wait_seq(master, node, 5)
        wait_until(lambda: receiver.in_flight == 0, message="idle")
        relay = proxy.send_to_client(master.settings.client_id, data)
        assert relay.closed.wait(10), "the master closed the connection"
        last = relay.client_packets()[-1]
        assert isinstance(last, mqtt5.DisconnectPacket)
        assert last.reason_code == reason
        assert receiver.violations == 1
        assert receiver.last_violation == reason
        wait_until(lambda: receiver.connects >= 2, 15, message="reconnected")
        send(publisher, node, range(6, 11))
        wait_seq(master, node, 10)
        assert master.ingestor.is_alive()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("m5-pki"))


@pytest.fixture
def tls_broker(make_broker: Callable[..., MosquittoBroker], pki: TestPki) -> MosquittoBroker:
    return make_broker(users={"picluster-master": PASSWORD}, tls_listener=pki.tls_listener())


def errors_of(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LISTENER_LOG and text in r.getMessage()]


def test_over_tls_with_a_password(
    tls_broker: MosquittoBroker, pki: TestPki, tmp_path: Path
) -> None:
    node = node_id()
    assert tls_broker.tls_port is not None
    url = f"mqtts://picluster-master@127.0.0.1:{tls_broker.tls_port}"
    with mqtt5_master(url, tmp_path, password=PASSWORD, ca_file=str(pki.ca_cert)) as master:
        sender = RawPublisher(
            "127.0.0.1", tls_broker.tls_port, "picluster-master", PASSWORD, str(pki.ca_cert)
        )
        send(sender, node, range(1, 21))
        sender.close()
        wait_seq(master, node, 20)


@contextmanager
def started(settings: MasterSettings) -> Iterator[MasterService]:
    """A master started without waiting for a connection (it is expected to fail)."""
    service = build(settings)
    service.start()
    try:
        yield service
    finally:
        service.stop()


# paho (the publishing connection) leaves a failed TLS handshake's socket to the collector.
PAHO_LEAKS_FAILED_TLS_SOCKET = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


@PAHO_LEAKS_FAILED_TLS_SOCKET
def test_an_untrusted_certificate_is_named(
    tls_broker: MosquittoBroker,
    pki: TestPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LISTENER_LOG)
    url = f"mqtts://picluster-master@127.0.0.1:{tls_broker.tls_port}"
    settings = settings_for(url, tmp_path, password=PASSWORD, ca_file=str(pki.other_ca_cert))
    with started(settings) as master:
        line = wait_until(lambda: errors_of(caplog, "not trusted"), message="the line")[0]
        assert "ca_file" in line.getMessage()
        assert PASSWORD not in line.getMessage()
        assert not line.exc_info, "a clear line, not a traceback"
        assert not receiver_of(master).connected.is_set()


@PAHO_LEAKS_FAILED_TLS_SOCKET
def test_a_certificate_for_another_host_is_refused(
    tls_broker: MosquittoBroker,
    pki: TestPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LISTENER_LOG)
    assert tls_broker.tls_port is not None
    # 127.0.0.2 reaches the broker (through the relay) but is not in its certificate.
    with MqttProxy(tls_broker.tls_port, host="127.0.0.2") as proxy:
        url = f"mqtts://picluster-master@127.0.0.2:{proxy.port}"
        settings = settings_for(url, tmp_path, password=PASSWORD, ca_file=str(pki.ca_cert))
        with started(settings) as master:
            line = wait_until(lambda: errors_of(caplog, "not trusted"), message="the line")[0]
            assert "mismatch" in line.getMessage()
            assert not receiver_of(master).connected.is_set()


@pytest.mark.parametrize("password", [None, "not-it"], ids=["anonymous", "wrong-password"])
def test_a_refused_login_is_one_clear_line(
    make_broker: Callable[..., MosquittoBroker],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    password: str | None,
) -> None:
    caplog.set_level(logging.ERROR, logger=LISTENER_LOG)
    own = make_broker(users={"picluster-master": PASSWORD})
    url = f"mqtt://{'picluster-master@' if password else ''}127.0.0.1:{own.port}"
    with started(settings_for(url, tmp_path, password=password)) as master:
        line = wait_until(lambda: errors_of(caplog, "refused the connection"), message="it")[0]
        text = line.getMessage()
        assert "Not authorized" in text or "Bad user name or password" in text
        assert not line.exc_info
        assert "not-it" not in caplog.text
        assert not receiver_of(master).connected.is_set()


@pytest.fixture(scope="module")
def hostile_master(
    broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MasterService]:
    """One mqtt5 master for the whole table of hostile messages."""
    with mqtt5_master(broker.url, tmp_path_factory.mktemp("m5-hostile")) as service:
        yield service


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_rejected_by_cause_on_the_mqtt5_path(
    case: Case, hostile_master: MasterService, publisher: RawPublisher
) -> None:
    master = hostile_master
    send_valid(publisher, master)
    before = master.counters.snapshot()
    publisher.send(case.topic, case.data(), retain=case.retain)
    send_valid(publisher, master)
    after = master.counters.snapshot()
    rejected = {
        cause: n - before["rejected"].get(cause, 0)
        for cause, n in after["rejected"].items()
        if n != before["rejected"].get(cause, 0)
    }
    assert rejected == ({} if case.cause is None else {case.cause: 1})
    assert after["accepted"] - before["accepted"] == (2 if case.cause is None else 1)
    assert receiver_of(master).violations == 0
    assert master.ingestor.crashes == []
