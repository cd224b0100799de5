"""`/healthz` answers 503 with the reason when the master is not storing, and it fails fast."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from master_service.app import MasterService, build
from master_service.ingest.inbox import Inbox
from master_service.ingest.ingestor import QUEUE_LIMIT
from master_service.ingest.router import RawMessage
from master_service.settings import MasterSettings
from tests.support.broker import MosquittoBroker, free_port
from tests.support.processes import RunningMaster, master_database, start_master
from tests.support.waiting import wait_until
from tests.unit.test_deploy_configs import load_compose

KEEPALIVE_S = 3


class BrokenInbox(Inbox[RawMessage | None]):
    """The real inbox, whose `take` always fails: a bug the ingest loop cannot get past."""

    def take(self, most: int, timeout_s: float) -> list[RawMessage | None]:
        raise RuntimeError("broken beyond repair")


def healthz(master: RunningMaster) -> tuple[int, dict[str, Any]]:
    """Status code and body of `GET /healthz` (503 is an answer, not an error)."""
    try:
        with urllib.request.urlopen(master.api + "/healthz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def compose_health_check(master: RunningMaster) -> int:
    """Run docker-compose.yml's health check of the master against this one; its exit status."""
    kind, program, *args = load_compose()["services"]["master"]["healthcheck"]["test"]
    assert (kind, program) == ("CMD", "python")
    args = [arg.replace("http://127.0.0.1:8080", master.api) for arg in args]
    return subprocess.run([sys.executable, *args], capture_output=True, check=False).returncode


def in_process_master(broker: MosquittoBroker, workdir: Path) -> MasterService:
    """A master whose ingest loop fails on every turn."""
    database = master_database(workdir)
    settings = MasterSettings(
        broker=broker.url,
        db=database.target,
        db_password=database.env.get("CLUSTER_DB_PASSWORD"),
        http=f"127.0.0.1:{free_port()}",
        client_id=f"health-{uuid.uuid4().hex[:8]}",
        prefix=f"hz{uuid.uuid4().hex[:6]}",
        ha_discovery=False,
    )
    service = build(settings)
    service.ingestor.queue = BrokenInbox(QUEUE_LIMIT)
    return service


def asgi_get(service: MasterService, path: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return await client.get(path)

    return asyncio.run(call())


def test_broker_gone_longer_than_a_keepalive_is_unhealthy_and_back_is_healthy(
    make_broker: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    broker = make_broker()
    master = start_master(
        broker.url, tmp_path, "--keepalive", str(KEEPALIVE_S), "--no-ha-discovery"
    )
    try:
        assert healthz(master)[0] == 200
        assert compose_health_check(master) == 0
        broker.stop()

        # A blip is not an outage: the first answer after the disconnect is still 200.
        def disconnected() -> tuple[int, dict[str, Any]] | None:
            answer = healthz(master)
            return answer if answer[1]["mqtt_connected"] is False else None

        def unhealthy() -> tuple[int, dict[str, Any]] | None:
            answer = healthz(master)
            return answer if answer[0] == 503 else None

        status, body = wait_until(disconnected, 10, 0.05, "the master to notice it is cut off")
        assert status == 200, body
        started = time.monotonic()
        status, body = wait_until(unhealthy, 15, 0.1, "503")
        assert time.monotonic() - started <= KEEPALIVE_S + 2
        assert body["status"] == "unhealthy"
        assert any("disconnected from the broker" in reason for reason in body["reasons"])
        assert compose_health_check(master) != 0  # compose marks the container unhealthy
        broker.start()
        wait_until(lambda: healthz(master)[0] == 200, 30, 0.1, "200 once reconnected")
    finally:
        master.stop()


def test_ingest_that_cannot_go_on_makes_healthz_503(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    service = in_process_master(broker, tmp_path)
    service.start()
    try:
        service.ingestor.join(15)
        assert not service.ingestor.is_alive()
        answer = asgi_get(service, "/healthz")
        assert answer.status_code == 503
        assert answer.json()["ingest_running"] is False
        assert "ingest is not running" in answer.json()["reasons"]
    finally:
        service.stop()


def test_serve_exits_non_zero_when_ingest_ends(broker: MosquittoBroker, tmp_path: Path) -> None:
    service = in_process_master(broker, tmp_path)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    # Should serve() not notice, stop it the way systemd would, so the test ends (and fails).
    watchdog = threading.Timer(30, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        with pytest.raises(SystemExit) as exited:
            service.serve()
        assert exited.value.code == 1
    finally:
        watchdog.cancel()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
