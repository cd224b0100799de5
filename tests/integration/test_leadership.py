"""Several masters' leader lock, epoch fence and history writers' lock, on a real PostgreSQL.

The masters' processes are in test_several_masters.py; here the parts are driven directly, so
that a lost lock connection (a server-side terminate, as a network cut or a pooler would end
it) and an open insert of another master can be staged exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from master_service.ingest.history_rows import insert_history
from master_service.peers.follower import share_history_writes
from master_service.peers.leadership import LEADER_LOCK, LeaderLock, NotLeaderError
from master_service.storage.database import Database
from master_service.storage.store import Store
from tests.support.postgres import PostgresServer
from tests.support.waiting import wait_until


@pytest.fixture
def url(postgres_url: str) -> str:
    """A fresh database, migrated."""
    Store(postgres_url).close()
    return postgres_url


@pytest.fixture
def locks(url: str) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    """Two masters' locks on one database."""
    first = LeaderLock(Database(url), "head-a", "http://head-a:8080/")
    second = LeaderLock(Database(url), "head-b", "http://head-b:8080/")
    yield first, second
    first.release()
    second.release()


def end_lock_session(postgres_server: PostgresServer) -> None:
    """End the session holding the leader's lock, from the server's side."""
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            (LEADER_LOCK,),
        ).fetchone()
        assert ended == (True,)


def test_one_master_leads_and_the_others_know_where(locks: tuple[LeaderLock, LeaderLock]) -> None:
    first, second = locks
    assert first.try_lead()
    assert not second.try_lead()
    assert second.leader_api() == "http://head-a:8080/"
    assert first.still_held()


def test_when_the_leaders_connection_ends_another_leads_and_the_old_one_knows(
    locks: tuple[LeaderLock, LeaderLock], postgres_server: PostgresServer
) -> None:
    first, second = locks
    assert first.try_lead()
    end_lock_session(postgres_server)
    assert second.try_lead()
    # The old leader's next check finds its connection gone and the lock taken.
    assert not first.still_held()
    assert second.still_held()


def test_a_leader_that_lost_the_lead_unawares_cannot_commit(
    url: str, locks: tuple[LeaderLock, LeaderLock], postgres_server: PostgresServer
) -> None:
    first, second = locks
    store = Store(url)
    try:
        assert first.try_lead()
        first.check_epoch(store.connection)  # its own epoch: a commit may go on
        store.commit()
        end_lock_session(postgres_server)
        assert second.try_lead()
        # Before its once-a-second check notices, the old leader tries to commit a flush.
        with pytest.raises(NotLeaderError, match="another master leads now"):
            first.check_epoch(store.connection)
        store.rollback()
        second.check_epoch(store.connection)
    finally:
        store.close()


def test_the_roll_up_waits_for_another_masters_open_history_insert(url: str) -> None:
    store = Store(url)
    other = Database(url).connect()  # a follower's flush, not committed yet
    now = time.time()
    minute = now - now % 60 - 120
    try:
        share_history_writes(other)
        insert_history(other, [("pi-late", minute + 1, {"cpu_percent": 40.0})])
        rolled = threading.Event()

        def roll_up() -> None:
            store.roll_up(now, now - 3600)
            rolled.set()

        worker = threading.Thread(target=roll_up, daemon=True)
        worker.start()

        def waiting_for_the_lock() -> bool:
            with psycopg.connect(url, autocommit=True) as watcher:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock(%'"
                ).fetchone()
                return bool(row and row[0])

        wait_until(waiting_for_the_lock, 10, message="the roll-up waiting for the open insert")
        assert not rolled.is_set()
        other.commit()
        worker.join(10)
        assert rolled.is_set()
        store.commit()
        row = store.connection.execute(
            "SELECT samples, cpu_percent FROM metrics_1m WHERE node = 'pi-late'"
        ).fetchone()
        assert tuple(row) == (1, 40.0)  # not passed by for a mark read while it was open
    finally:
        other.close()
        store.close()
