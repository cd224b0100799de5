"""One command to many nodes at once: choose them (names, a tag, all), send in parallel."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Final

from master_service.control.commands import CommandRefusedError
from master_service.storage.command_log import CommandRecord

logger = logging.getLogger(__name__)

MAX_PARALLEL: Final = 128  # threads that wait for replies at once (each mostly sleeps)

Send = Callable[[str, str, Mapping[str, Any], float], CommandRecord]


@dataclass(frozen=True)
class FanOutRow:
    """One node's outcome: `status` is ok, error (it answered with one), timeout or refused."""

    node: str
    ok: bool
    status: str
    result: Any
    error: str | None
    id: str | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """The row as the API answers it."""
        return asdict(self)


def send_one(
    send: Send,
    node: str,
    command: str,
    args: Mapping[str, Any],
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> FanOutRow:
    """Send to one node with the single-node rules; a refusal becomes a row, not an error."""
    started = clock()
    try:
        record = send(node, command, args, timeout_s)
    except CommandRefusedError as error:
        return FanOutRow(node, False, "refused", None, str(error), None, _since(clock, started))
    status = "timeout" if record.status in ("pending", "timeout") else record.status
    error_text = record.error
    if status == "timeout":
        error_text = f"no reply within {timeout_s:g} s"
    return FanOutRow(
        node,
        bool(record.ok) and status == "ok",
        status,
        record.result,
        error_text,
        record.id,
        _since(clock, started),
    )


def fan_out(
    send: Send,
    nodes: Sequence[str],
    command: str,
    args: Mapping[str, Any],
    timeout_s: float,
) -> list[FanOutRow]:
    """Send `command` to every node at once; one row per node, in the order of `nodes`."""
    if not nodes:
        return []
    logger.info("sending %s to %d nodes", command, len(nodes))
    workers = min(len(nodes), MAX_PARALLEL)
    with ThreadPoolExecutor(workers, thread_name_prefix="fan-out") as pool:
        futures = [pool.submit(send_one, send, node, command, args, timeout_s) for node in nodes]
        return [future.result() for future in futures]


def _since(clock: Callable[[], float], started: float) -> float:
    return round(clock() - started, 3)
