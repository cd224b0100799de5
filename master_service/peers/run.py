"""Run one of several masters: lead while holding the lock, follow otherwise, switch over."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from master_service.peers.adoption import Adoptions
from master_service.peers.leadership import FOLLOWER, LEADER, LeaderLock
from master_service.settings import MasterSettings

if TYPE_CHECKING:
    from master_service.app import MasterService

logger = logging.getLogger(__name__)

TOOK_THE_LEAD: Final = "took the lead"
LOST_THE_LEAD: Final = "lost the lead"

# Builds the master for a role (with the lock: the leader's address, its epoch), or says
# how to exit.
Start = Callable[[str, LeaderLock], "MasterService | int"]


def run_several(settings: MasterSettings, lock: LeaderLock, start: Start) -> int:
    """Serve as leader or follower until stopped; rebuild in the other role when it changes.

    A follower polls the lock every second (the run's watch): when the leader dies, its
    session ends, the lock is free, and the first follower to take it stops following and
    starts again as the leader, in the same process, with the lock held throughout.
    """
    stopped = threading.Event()  # set by SIGTERM or SIGINT, in whichever run it comes
    try:
        while not stopped.is_set():
            role = LEADER if lock.try_lead() else FOLLOWER
            logger.info("starting as the %s of several masters", role)
            service = start(role, lock)
            if isinstance(service, int):
                return service
            if role == FOLLOWER:
                if service.serve(_lead_free(lock), stopped) is None:
                    return 0  # stopped by a signal
                continue
            adoptions = Adoptions(
                settings,
                lambda: lock.silent_members(settings.member_timeout),
                lock.forget_member,
            )
            adoptions.start()
            try:
                if service.serve(_lead_kept(lock), stopped) is None:
                    return 0
            finally:
                adoptions.stop()
        return 0
    finally:
        lock.release()


def _lead_free(lock: LeaderLock) -> Callable[[], str | None]:
    def watch() -> str | None:
        try:
            return TOOK_THE_LEAD if lock.try_lead() else None
        except Exception as error:  # the database is away: go on following
            logger.debug("cannot poll the leader's lock: %s", error)
            return None

    return watch


def _lead_kept(lock: LeaderLock) -> Callable[[], str | None]:
    return lambda: None if lock.still_held() else LOST_THE_LEAD
