"""Home Assistant's button presses: check each one, then send the command through the master.

Home Assistant's broker user may not write commands (mosquitto/acl), so its buttons publish
`{"node", "command", "ts"}` on `<prefix>/_master/ha_command` and the master decides. A press
is refused (logged, counted as `bad_ha_command`) unless it is a JSON object naming a known node
and a command in PRESSABLE that the node advertises, pressed less than MAX_PRESS_AGE_S ago.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cluster_protocol.payloads import MachineDetails
from master_service.control.commands import CommandRefusedError, CommandService
from master_service.home_assistant import discovery as hd
from master_service.ingest.counters import IngestCounters
from master_service.state import ClusterState

logger = logging.getLogger(__name__)

PRESSABLE: Final = frozenset(command for command, *_ in hd.BUTTONS)
REJECT_CAUSE: Final = "bad_ha_command"
MAX_PRESS_BYTES: Final = 1024
# A press older than this (queued while the master was away, or retained) is not run: a
# reboot nobody expects any more is worse than a lost click. Also bounds clock skew.
MAX_PRESS_AGE_S: Final = 120.0
MAX_IN_FLIGHT: Final = 4
PRESS_TIMEOUT_S: Final = 10.0


class PressError(ValueError):
    """A press the master will not act on; the message says why."""


@dataclass(frozen=True, slots=True)
class Press:
    """One checked button press."""

    node: str
    command: str
    ts: float


def parse_press(payload: bytes, now: float) -> Press:
    """Decode and check a press on its own (no state needed); raise PressError."""
    if len(payload) > MAX_PRESS_BYTES:
        raise PressError(f"{len(payload)} bytes, over {MAX_PRESS_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as error:
        raise PressError(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise PressError("not a JSON object")
    node, command, ts = body.get("node"), body.get("command"), body.get("ts")
    if not isinstance(node, str) or not node:
        raise PressError("no node")
    if command not in PRESSABLE:
        raise PressError(f"command {command!r} is not one of {sorted(PRESSABLE)}")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise PressError("no press time (ts)")
    if abs(now - ts) > MAX_PRESS_AGE_S:
        raise PressError(
            f"pressed {now - ts:.0f} s ago, outside ±{MAX_PRESS_AGE_S:.0f} s "
            "(queued too long, retained, or the clocks disagree)"
        )
    return Press(node, str(command), float(ts))


def check_advertised(press: Press, details: MachineDetails | None) -> None:
    """Raise PressError unless the node offers this command (refresh: unless it says not)."""
    advertised = None if details is None else details.get("commands")
    if isinstance(advertised, list):
        if press.command not in advertised:
            raise PressError(f"{press.node} does not enable {press.command}")
    elif press.command not in hd.ALWAYS_PRESSABLE:
        raise PressError(f"{press.node} advertises no commands, so not {press.command}")


class ButtonPresses:
    """Handler for the press topic: quick on paho's thread, the command on a worker thread."""

    def __init__(
        self,
        commands: CommandService,
        state: ClusterState,
        counters: IngestCounters,
        cluster_prefix: str,
        clock: Callable[[], float] = time.time,
        timeout_s: float = PRESS_TIMEOUT_S,
    ) -> None:
        self.topic = hd.ha_command_topic(cluster_prefix)
        self._commands = commands
        self._state = state
        self._counters = counters
        self._clock = clock
        self._timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._lock = threading.Lock()
        self._seen: dict[bytes, float] = {}  # payload -> when; QoS 1 may deliver a press twice

    def submit(self, payload: bytes) -> None:
        """Called on paho's network thread: check the press, hand the command to a thread."""
        now = self._clock()
        try:
            press = parse_press(payload, now)
        except PressError as error:
            self._refuse(str(error))
            return
        if self._repeated(payload, now):
            logger.info("repeated press of %s on %s ignored", press.command, press.node)
            return
        if not self._slots.acquire(blocking=False):
            self._refuse(f"{MAX_IN_FLIGHT} presses still waiting for replies")
            return
        worker = threading.Thread(
            target=self._run, args=(press,), name="picluster-ha-press", daemon=True
        )
        try:
            worker.start()
        except BaseException:
            self._slots.release()
            raise

    def _repeated(self, payload: bytes, now: float) -> bool:
        with self._lock:
            self._seen = {p: t for p, t in self._seen.items() if now - t <= 2 * MAX_PRESS_AGE_S}
            if payload in self._seen:
                return True
            self._seen[payload] = now
            return False

    def _run(self, press: Press) -> None:
        try:
            with self._state.lock:
                node = self._state.get(press.node)
                details = None if node is None else node.details
            if node is None:
                raise PressError(f"no node {press.node!r} is known")
            check_advertised(press, details)
            logger.info("Home Assistant pressed %s on %s", press.command, press.node)
            record = self._commands.send(press.node, press.command, timeout_s=self._timeout_s)
        except (PressError, CommandRefusedError) as error:
            self._refuse(str(error))
        except Exception:
            logger.exception("pressing %s on %s failed", press.command, press.node)
        else:
            if record.status == "ok":
                logger.info("%s on %s done: %s", press.command, press.node, record.result)
            else:
                logger.warning(
                    "%s on %s: %s %s",
                    press.command,
                    press.node,
                    record.status,
                    record.error or "(no reply in time)",
                )
        finally:
            self._slots.release()

    def _refuse(self, reason: str) -> None:
        self._counters.reject(REJECT_CAUSE, self.topic, reason)
