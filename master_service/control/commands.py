"""Commands to nodes: publish `<prefix>/<node>/cmd/<name>`, await the reply, keep both in SQLite."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any, Final

from cluster_protocol import DEFAULT_PREFIX, command_topic
from cluster_protocol.commands import (
    COMMAND_NAME_PATTERN,
    CommandPayloadError,
    CommandTooLargeError,
    build_command,
    check_reply,
)
from master_service.ingest.observers import Observer
from master_service.state import ClusterState, NodeStatus
from master_service.storage.command_log import CommandLog, CommandRecord

__all__ = ["CommandLog", "CommandRecord", "CommandRefusedError", "CommandService"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 5.0
MAX_TIMEOUT_S: Final = 120.0
MAX_LISTED: Final = 200

Publish = Callable[[str, bytes, int, bool], None]

# How long a command waits for the writer to record it (or its timeout) before giving up:
# far more than a flush takes, short enough for an HTTP client still to be there.
RECORD_WAIT_S: Final = 5.0


class CommandRefusedError(Exception):
    """The master will not send this command; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CommandService(Observer):
    """Sends commands and matches replies (delivered by the router on the ingest thread)."""

    def __init__(
        self,
        log: CommandLog,
        publish: Publish,
        state: ClusterState,
        connected: Callable[[], bool],
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self._publish = publish
        self._state = state
        self._connected = connected
        self._prefix = prefix
        self._clock = clock
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def send(
        self,
        node: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> CommandRecord:
        """Publish one command and wait for its reply; the record says ok, error or timeout."""
        if not COMMAND_NAME_PATTERN.match(command):
            raise CommandRefusedError(422, f"{command!r} is not a command name (a-z, 0-9, _)")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise CommandRefusedError(422, f"timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        view = self._state.view(node)
        if view is None:
            raise CommandRefusedError(404, f"no node {node!r} is known")
        if view["state"] == NodeStatus.OFFLINE:
            raise CommandRefusedError(409, f"node {node!r} is offline; nothing would receive it")
        if not self._connected():
            raise CommandRefusedError(503, "the master is not connected to the broker")
        now = self._clock()
        # The node refuses the command once the master has stopped waiting for it.
        record = CommandRecord(
            id=uuid.uuid4().hex,
            node=node,
            command=command,
            args=dict(args or {}),
            sent_at=now,
            expires=now + timeout_s,
            status="pending",
        )
        try:
            payload = build_command(record.id, record.args, record.expires)
        except CommandTooLargeError as error:
            raise CommandRefusedError(
                413, f"command is {error.size} bytes, over the limit"
            ) from error
        except CommandPayloadError as error:
            raise CommandRefusedError(422, str(error)) from error
        answered = threading.Event()
        with self._lock:
            self._waiting[record.id] = answered
        try:
            # Recorded before it is sent: a reply can only ever update a command on file.
            if not _committed(self.log.add(record)):
                self.log.time_out(record.id)  # if the insert lands later, it says so
                raise CommandRefusedError(503, "the master cannot record commands right now")
            logger.info("sending %s to %s (id %s)", command, node, record.id)
            self._publish(command_topic(node, command, self._prefix), payload, 1, False)
            if not answered.wait(timeout_s):
                _committed(self.log.time_out(record.id))
                logger.warning("no reply from %s to %s (id %s)", node, command, record.id)
        finally:
            with self._lock:
                self._waiting.pop(record.id, None)
        stored = self.log.get(record.id)
        if stored is None or stored.status == "pending":  # the store is failing right now
            return replace(stored or record, status="timeout")
        return stored

    def recent(self, node: str, limit: int = 20) -> list[CommandRecord]:
        """A node's latest commands and replies, newest first."""
        return self.log.recent(node, max(1, min(limit, MAX_LISTED)))

    def close(self) -> None:
        """Close the read connection."""
        self.log.close()

    # -- Observer (ingest thread, no lock held): quick -----------------------------------------

    def node_reply(self, node: str, reply: Mapping[str, Any]) -> None:
        """Queue the reply's write; whoever waits for it wakes once it is committed."""
        try:
            checked = check_reply(reply)
        except CommandPayloadError as error:
            logger.warning("ignoring a bad reply from %s: %s", node, error)
            return
        command_id = checked.id

        def stored(done: Future[bool]) -> None:
            if done.exception() is not None or not done.result():
                logger.warning("reply from %s to unknown or answered command %r", node, command_id)
                return
            with self._lock:
                answered = self._waiting.get(command_id)
            if answered is not None:
                answered.set()

        answer = {
            "id": checked.id,
            "ok": checked.ok,
            "result": checked.result,
            "error": checked.error,
        }
        self.log.answer(node, answer, self._clock()).add_done_callback(stored)

    def node_forgotten(self, node: str) -> None:
        """Drop a forgotten node's commands (with the writer's next transaction)."""
        self.log.delete_node(node)


def _committed(write: Future[Any]) -> bool:
    """Wait for a queued write to be committed; False if the store does not take it in time."""
    try:
        write.result(RECORD_WAIT_S)
    except FutureTimeout:
        return False
    except Exception:  # the write itself failed (logged by the writer)
        return False
    return True
