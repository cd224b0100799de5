"""A real full disk under the master's database: reported, nothing acknowledged, nothing lost.

The database lives on a small tmpfs this test mounts (so it must run as root, as CI does); a
filler file takes every free byte, then goes. The master and the node are the real processes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster_protocol import decode_envelope
from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

pytestmark = pytest.mark.sqlite_file(
    "fills the disk under the SQLite file and reads it with sqlite3"
)

INTERVAL_S = 0.5
TMPFS_SIZE = "8m"


class FullDisk:
    """A tmpfs of its own that can be filled to the last byte and freed again."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"

    def mount(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("this test mounts a tmpfs and must run as root (CI does)")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.mountpoint)],
            check=True,
        )

    def fill(self) -> None:
        """Write until the file system says ENOSPC, in ever smaller pieces."""
        with self.filler.open("wb", buffering=0) as handle:
            for size in (1 << 20, 1 << 12, 1):
                while True:
                    try:
                        handle.write(b"\0" * size)
                    except OSError as error:
                        if error.errno != errno.ENOSPC:
                            raise
                        break

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        """Detach the tmpfs, lazily if something still holds it open.

        A mount left behind under pytest's temporary directory makes pytest's clean-up of old
        sessions fail later, so this must never leave one.
        """
        if subprocess.run(["umount", str(self.mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.mountpoint)], check=True)


@dataclass
class Setup:
    broker: MosquittoBroker
    disk: FullDisk
    workdir: Path
    prefix: str
    node_id: str
    watcher: Watcher
    master: RunningMaster | None = None
    node: Service | None = None

    @property
    def db(self) -> Path:
        return self.disk.mountpoint / "master.db"

    def start_master(self) -> RunningMaster:
        self.master = start_master(
            self.broker.url,
            self.workdir / "master",
            "--prefix", self.prefix,
            "--client-id", f"picluster-master-{self.prefix}",
            "--no-ha-discovery",
            db=self.db,
        )  # fmt: skip
        return self.master

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """`GET /healthz`: status code and body (503 is an answer here, not an error)."""
        assert self.master is not None
        try:
            with urllib.request.urlopen(self.master.api + "/healthz", timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def sent(self) -> dict[int, float]:
        """The node's metrics as the broker passed them on: seq -> ts (resends counted once)."""
        topic = f"{self.prefix}/{self.node_id}/metrics"
        seen = {}
        for message in self.watcher.on(topic):
            envelope = decode_envelope(message.payload, self.node_id, "metrics", 0.0)
            assert envelope.seq is not None
            seen[envelope.seq] = envelope.ts
        return seen

    def stored(self) -> list[float]:
        """The timestamps of the node's history rows, read from the database file."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT ts FROM metrics_raw WHERE node = ? ORDER BY ts", (self.node_id,)
            ).fetchall()
        return [ts for (ts,) in rows]

    def wait_unhealthy(self) -> dict[str, Any]:
        def unhealthy() -> dict[str, Any] | None:
            status, body = self.healthz()
            return body if status == 503 else None

        return wait_until(unhealthy, 20, 0.1, "/healthz to answer 503")

    def wait_more_sent(self, more: int) -> None:
        target = len(self.sent()) + more
        wait_until(lambda: len(self.sent()) >= target, 20, 0.1, f"{more} more samples sent")

    def stop_node_and_wait_all_stored(self) -> None:
        """Stop the node, then wait until every sample it sent is in history exactly once."""
        assert self.node is not None
        assert self.master is not None
        self.node.stop()
        expected = sorted(self.sent().values())
        wait_until(lambda: self.stored() == expected, 30, 0.2, "every sample sent in history")
        view = self.master.node(self.node_id)
        assert view is not None
        assert view["counters"]["seq_gaps"] == 0


@pytest.fixture
def setup(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Setup]:
    disk = FullDisk(tmp_path / "db")
    disk.mount()
    suffix = uuid.uuid4().hex[:6]
    prefix, node_id = f"fd{suffix}", f"fd-node-{suffix}"
    watcher = Watcher(broker.host, broker.port, f"{prefix}/{node_id}/metrics")
    running = Setup(broker, disk, tmp_path, prefix, node_id, watcher)
    try:
        running.start_master()
        running.node = start_node(
            broker.url,
            tmp_path,
            node_id,
            "--prefix", prefix,
            "--keepalive", "2",
            interval=INTERVAL_S,
        )  # fmt: skip
        wait_until(lambda: len(running.stored()) >= 2, 20, 0.1, "the first samples stored")
        yield running
    finally:
        if running.node is not None:
            running.node.stop()
        if running.master is not None:
            running.master.stop()
        watcher.close()
        disk.unmount()


def test_a_full_disk_is_reported_acknowledges_nothing_and_loses_nothing(setup: Setup) -> None:
    assert setup.master is not None
    setup.disk.fill()
    body = setup.wait_unhealthy()
    assert body["status"] == "unhealthy"
    assert "full" in body["store_error"]
    assert any("cannot write to the store" in reason for reason in body["reasons"])
    committed = body["committed"]
    setup.wait_more_sent(4)
    status, body = setup.healthz()
    assert status == 503
    assert body["committed"] == committed  # nothing stored, so nothing acknowledged

    setup.disk.free()
    wait_until(lambda: setup.healthz()[0] == 200, 15, 0.1, "/healthz to answer 200 again")
    assert setup.healthz()[1]["committed"] > committed
    setup.stop_node_and_wait_all_stored()
    log = setup.master.log()
    assert log.count("cannot write to the store") == 1  # one error line for the outage
    assert "writable again" in log


def test_a_master_killed_while_the_disk_is_full_gets_everything_again(setup: Setup) -> None:
    assert setup.master is not None
    setup.disk.fill()
    setup.wait_unhealthy()
    setup.wait_more_sent(3)
    # Whatever the master held in memory dies with it: only unacknowledged messages, which
    # the broker keeps in the master's session, can bring those samples back.
    setup.master.stop(signal.SIGKILL)
    setup.disk.free()
    setup.start_master()
    setup.stop_node_and_wait_all_stored()
