"""Rolls run by the master itself, for the dashboard, on a thread, polled for progress.

They are the same waves as `cluster-master reboot --rolling`: `roll()` (rolling.py) is the one
implementation; here it talks to the master's own parts (`LocalRollApi`) instead of its HTTP
API. One roll at a time: two at once could take more nodes down than either asked for.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from master_service.alerts.model import Silence
from master_service.control.fanout import Send, fan_out
from master_service.control.rolling import RollApi, RollOutcome, RollPlan, not_online, roll

logger = logging.getLogger(__name__)

KEEP: Final = 20  # finished rolls kept for the dashboard


class RolloutRefusedError(RuntimeError):
    """A roll that cannot start: another runs, or a chosen node is not online."""


class LocalRollApi:
    """`RollApi` over the running master's commands, state and alerts."""

    def __init__(
        self,
        send: Send,
        view: Callable[[str], Mapping[str, Any] | None],
        silence: Callable[[str, str | None, float, str], Silence],
        unsilence: Callable[[int], bool],
    ) -> None:
        self._send = send
        self._view = view
        self._silence = silence
        self._unsilence = unsilence

    def send_many(
        self, nodes: Sequence[str], command: str, args: Mapping[str, Any], timeout_s: float
    ) -> list[dict[str, Any]]:
        """Send to these nodes at once, as `POST /api/commands` does."""
        return [row.to_dict() for row in fan_out(self._send, nodes, command, args, timeout_s)]

    def view(self, node: str) -> Mapping[str, Any] | None:
        """The node's view, as the API shows it."""
        return self._view(node)

    def silence(self, node: str, for_s: float, comment: str) -> int | None:
        """Silence every alert of the node; None when the store would not take it."""
        try:
            return self._silence(node, None, for_s, comment).id
        except Exception:  # a roll goes on unsilenced, and says so
            logger.exception("cannot silence %s for the roll", node)
            return None

    def unsilence(self, silence_id: int) -> None:
        """End a silence."""
        self._unsilence(silence_id)


@dataclass
class Rollout:
    """One roll: what, over which nodes, its report lines so far and how it ended."""

    id: int
    command: str
    args: Mapping[str, Any]
    nodes: list[str]
    max_unavailable: int
    started: float
    lines: list[str] = field(default_factory=list)
    outcome: RollOutcome | None = None
    error: str | None = None
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The roll as `GET /api/rollouts/{id}` shows it."""
        outcome = self.outcome
        return {
            "id": self.id,
            "command": self.command,
            "args": dict(self.args),
            "nodes": self.nodes,
            "max_unavailable": self.max_unavailable,
            "started": self.started,
            "finished": self.finished,
            "running": self.finished is None,
            "ok": None if self.finished is None else outcome is not None and outcome.ok,
            "done": list(outcome.done) if outcome else [],
            "failed": dict(outcome.failed) if outcome else {},
            "untouched": list(outcome.untouched) if outcome else [],
            "error": self.error,
            "lines": list(self.lines),
        }


class Rollouts:
    """Starts rolls on a thread, one at a time, and keeps the last ones."""

    def __init__(self, api: RollApi, clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._kept: deque[Rollout] = deque(maxlen=KEEP)
        self._running: Rollout | None = None

    def start(self, nodes: Sequence[str], plan: RollPlan) -> Rollout:
        """Start rolling `plan` over `nodes`; RolloutRefusedError when it cannot start."""
        with self._lock:
            if self._running is not None:
                raise RolloutRefusedError(
                    f"roll {self._running.id} is still running; one roll at a time"
                )
            down = not_online(self._api, nodes)
            if down:
                listed = ", ".join(f"{node} ({state})" for node, state in down.items())
                raise RolloutRefusedError(
                    f"every chosen node must be online first; not online: {listed}"
                )
            rollout = Rollout(
                next(self._ids),
                plan.command,
                plan.args,
                list(nodes),
                plan.max_unavailable,
                self._clock(),
            )
            self._running = rollout
            self._kept.append(rollout)
        threading.Thread(
            target=self._run, args=(rollout, plan), name=f"rollout-{rollout.id}", daemon=True
        ).start()
        return rollout

    def _run(self, rollout: Rollout, plan: RollPlan) -> None:
        started = time.monotonic()

        def report(line: str) -> None:
            rollout.lines.append(f"[{time.monotonic() - started:7.1f} s] {line}")

        what = "reboot" if plan.reboots else f"task {plan.args.get('task')}"
        report(
            f"rolling {what} over {len(rollout.nodes)} nodes, {plan.max_unavailable} at a "
            f"time, each within {plan.timeout_s:g} s"
        )
        try:
            rollout.outcome = roll(self._api, rollout.nodes, plan, report)
            outcome = rollout.outcome
            if outcome.ok:
                report(f"done: {len(outcome.done)} of {len(rollout.nodes)} nodes")
            for node, reason in outcome.failed.items():
                report(f"roll stopped at {node}: {reason}")
            logger.info("roll %d ended: %s", rollout.id, "ok" if outcome.ok else outcome.failed)
        except Exception as error:  # the roll's own bug must not kill the master's thread
            logger.exception("roll %d failed", rollout.id)
            rollout.error = str(error)
        finally:
            with self._lock:
                rollout.finished = self._clock()
                self._running = None

    def get(self, rollout_id: int) -> Rollout | None:
        """A roll by id, while it is kept."""
        with self._lock:
            return next((r for r in self._kept if r.id == rollout_id), None)

    def recent(self) -> list[Rollout]:
        """The kept rolls, newest first."""
        with self._lock:
            return list(reversed(self._kept))
