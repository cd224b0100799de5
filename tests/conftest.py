"""Shared fixtures: a real Mosquitto per test session (and fresh ones on demand), watchers."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode
from pytest_mqtt.model import MqttSettings

from master_service.storage.database import Engine
from master_service.storage.store import Store
from tests.support.broker import MosquittoBroker
from tests.support.databases import MasterDatabase
from tests.support.postgres import PostgresServer, postgres_bindir
from tests.support.watcher import Watcher

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _release_wake_up_sockets_on_loop_stop() -> None:
    """Make paho close its wake-up socket pair when its network thread has stopped.

    paho's `loop_start` opens a loopback socket pair that only `Client.__del__` closes. A
    test's client sits in a reference cycle (its callbacks are bound methods), so the garbage
    collector may finalize the sockets before the client, and Python warns "unclosed
    socket"; with warnings as errors that fails a run at random. The agents and the master
    run in their own processes here, so this changes only the tests' own clients (and
    in-process masters), and only after their thread has ended: a later `loop_start` opens
    a new pair.
    """
    stop = mqtt.Client.loop_stop

    def loop_stop(self: mqtt.Client) -> MQTTErrorCode:
        thread = self._thread
        result = stop(self)
        if thread is not threading.current_thread():  # ended, or never started
            self._reset_sockets(sockpair_only=True)
        return result

    mqtt.Client.loop_stop = loop_stop  # type: ignore[method-assign]


_release_wake_up_sockets_on_loop_stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    """--master-db: the engine of the master processes the integration tests start."""
    parser.addoption(
        "--master-db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the masters' database in the integration tests: a SQLite file (default), or a"
        " fresh database of the session's PostgreSQL server (deselects sqlite_file tests)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as `integration`; deselect sqlite_file on PG."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    if config.getoption("master_db") == "postgresql":
        deselected = [item for item in items if item.get_closest_marker("sqlite_file")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item not in deselected]


@pytest.fixture(params=[Engine.SQLITE, Engine.POSTGRESQL], ids=lambda engine: engine.value)
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty master database on each engine: a SQLite file's path, a PostgreSQL URL.

    Tests of what is stored take this (or `store`) so that they run on both engines.
    """
    if request.param is Engine.SQLITE:
        return str(tmp_path / "master.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def master_database(db_target: str) -> MasterDatabase:
    """A new master database on each engine, ready for `start_master(db=..., env=...)`."""
    return MasterDatabase.of(db_target)


@pytest.fixture
def store(db_target: str) -> Iterator[Store]:
    """A master database (SQLite file, then PostgreSQL), migrated to the current schema."""
    opened = Store(db_target)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """The mosquitto executable; the test command installs it, so missing is a failure."""
    path = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if path is None:
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    return path


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str
) -> Iterator[MosquittoBroker]:
    """One anonymous broker shared by the session's tests (give each test its own node ids)."""
    with MosquittoBroker(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def make_broker(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str
) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start brokers of one's own (auth, ACL, persistence); all are stopped after the test."""
    started: list[MosquittoBroker] = []

    def start(**options: Any) -> MosquittoBroker:
        running = MosquittoBroker(tmp_path_factory.mktemp("own-broker"), **options).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server on a free loopback port for the session; missing is a failure."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb/pg_ctl): apt-get install postgresql,"
            " or run the README's test command, which installs it"
        )
    with PostgresServer(tmp_path_factory.mktemp("postgres"), bindir=bindir) as running:
        yield running


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL (password included) of a fresh, empty database of the session's server."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def mqtt_settings(broker: MosquittoBroker) -> MqttSettings:
    """Point pytest-mqtt's `capmqtt` at the session's own broker, never localhost:1883."""
    return MqttSettings(
        host=broker.host, port=broker.port, username="", password="", subscribe_all=True
    )


@pytest.fixture
def watch(broker: MosquittoBroker) -> Iterator[Callable[..., Watcher]]:
    """Open watchers (paho subscribers that record QoS and retain) on the session broker."""
    opened: list[Watcher] = []

    def open_watcher(topic_filter: str = "cluster/#", on: MosquittoBroker | None = None) -> Watcher:
        target = on or broker
        watcher = Watcher(target.host, target.port, topic_filter)
        opened.append(watcher)
        return watcher

    yield open_watcher
    for watcher in opened:
        watcher.close()
