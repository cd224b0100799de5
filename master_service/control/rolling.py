"""Rolling reboots and tasks: a wave of nodes at a time, each back and healthy before the next.

`roll()` talks to the master through `RollApi`: from the command line over its HTTP API
(`HttpRollApi`), so an interrupted roll leaves nothing behind but silences that end by
themselves; from the dashboard inside the master (`rollouts.py`).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from master_service.api_client import ApiError, api_call, detail_of

logger = logging.getLogger(__name__)

POLL_S: Final = 0.25  # how often a waiting node's view is read
SILENCE_MARGIN_S: Final = 60.0  # a silence outlives the wait, so an aborted roll's ends soon
SILENCE_COMMENT: Final = "rolling reboot"

Report = Callable[[str], None]


class RollApi(Protocol):
    """What a roll needs from the master."""

    def send_many(
        self, nodes: Sequence[str], command: str, args: Mapping[str, Any], timeout_s: float
    ) -> list[dict[str, Any]]:
        """Send a command to these nodes at once; one result row per node."""
        ...

    def view(self, node: str) -> Mapping[str, Any] | None:
        """The node as `GET /api/nodes/{node}` shows it; None when unknown."""
        ...

    def silence(self, node: str, for_s: float, comment: str) -> int | None:
        """Silence every alert of the node; its id, or None when the master would not."""
        ...

    def unsilence(self, silence_id: int) -> None:
        """End a silence."""
        ...


@dataclass(frozen=True)
class RollPlan:
    """What to roll: `reboot` (the node must drop off and come back) or `run` of a task."""

    command: str
    args: Mapping[str, Any]
    max_unavailable: int
    timeout_s: float  # from the command until the node is back (or healthy after its task)
    reply_timeout_s: float  # how long the command's own reply may take
    comment: str = SILENCE_COMMENT

    @property
    def reboots(self) -> bool:
        """True when each node must go down and come back (a reboot)."""
        return self.command == "reboot"


@dataclass
class RollOutcome:
    """How a roll ended: nodes done, the node that stopped it and why, nodes left alone."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every node went through."""
        return not self.failed and not self.untouched


@dataclass
class _Watch:
    """One node of a wave while the roll waits for it."""

    node: str
    since0: Any  # `state_since` before the command: a new value means it went down or came up
    deadline: float
    started: float
    down: bool = False
    up_metrics_ts: float | None = None  # metrics_ts when first seen back online
    up: bool = False


def waves(nodes: Sequence[str], size: int) -> list[list[str]]:
    """`nodes` in groups of `size`, in order."""
    return [list(nodes[i : i + size]) for i in range(0, len(nodes), max(1, size))]


def not_online(api: RollApi, nodes: Sequence[str]) -> dict[str, str]:
    """Nodes that are not online now, with their state (a roll starts only when all are)."""
    found: dict[str, str] = {}
    for node in nodes:
        view = api.view(node)
        state = "unknown to the master" if view is None else str(view.get("state"))
        if state != "online":
            found[node] = state
    return found


def roll(
    api: RollApi,
    nodes: Sequence[str],
    plan: RollPlan,
    report: Report,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_S,
) -> RollOutcome:
    """Roll `plan` over `nodes` wave by wave; stop after the first wave where a node failed."""
    outcome = RollOutcome()
    groups = waves(nodes, plan.max_unavailable)
    for number, wave in enumerate(groups, 1):
        report(f"wave {number}/{len(groups)}: {', '.join(wave)}")
        _run_wave(api, wave, plan, report, outcome, clock, sleep, poll_s)
        if outcome.failed:
            left = [
                node for node in wave if node not in outcome.failed and node not in outcome.done
            ]
            outcome.untouched = left + [node for group in groups[number:] for node in group]
            break
    return outcome


def _run_wave(
    api: RollApi,
    wave: Sequence[str],
    plan: RollPlan,
    report: Report,
    outcome: RollOutcome,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll_s: float,
) -> None:
    before = {node: api.view(node) or {} for node in wave}
    for node, view in before.items():
        if view.get("state") != "online":
            outcome.failed[node] = f"was {view.get('state', 'unknown')} before its turn"
            report(f"{node}: {outcome.failed[node]}; nothing sent to this wave")
    if outcome.failed:  # one node short already: taking the others down too would be more
        return
    silences: dict[str, int | None] = {}
    try:
        for node in wave:
            silences[node] = _silence(api, node, plan, report)
        started = clock()
        rows = api.send_many(wave, plan.command, plan.args, plan.reply_timeout_s)
        watches: list[_Watch] = []
        for row in rows:
            node = str(row["node"])
            if not row.get("ok"):
                outcome.failed[node] = f"did not accept {plan.command}: {row.get('error')}"
                report(f"{node}: {outcome.failed[node]}")
                continue
            report(f"{node}: {_accepted(plan)}")
            watch = _Watch(node, before[node].get("state_since"), started + plan.timeout_s, started)
            if not plan.reboots:  # a task: only a sample newer than the one after it is needed
                watch.down = watch.up = True
                watch.up_metrics_ts = _metrics_ts(api.view(node))
            watches.append(watch)
        _wait_back(api, watches, plan, report, outcome, clock, sleep, poll_s, silences)
    finally:
        for silence in silences.values():  # nodes that failed to accept, or an interruption
            if silence is not None:
                _unsilence(api, silence, report)


def _wait_back(
    api: RollApi,
    watches: list[_Watch],
    plan: RollPlan,
    report: Report,
    outcome: RollOutcome,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll_s: float,
    silences: dict[str, int | None],
) -> None:
    """Poll the wave's nodes until each is back or out of time; end its silence either way."""
    waiting = list(watches)
    while waiting:
        for watch in list(waiting):
            view = api.view(watch.node)
            if _advance(watch, view, plan, report):
                outcome.done.append(watch.node)
                report(f"{watch.node}: back, sending metrics ({clock() - watch.started:.1f} s)")
            elif clock() > watch.deadline:
                state = "unknown" if view is None else view.get("state")
                what = "come back" if plan.reboots else "send metrics again"
                outcome.failed[watch.node] = (
                    f"did not {what} within {plan.timeout_s:g} s (now {state})"
                )
                report(f"{watch.node}: {outcome.failed[watch.node]}")
            else:
                continue
            waiting.remove(watch)
            # Back: its alerts count again. Failed: they should be heard, not held back.
            silence = silences.pop(watch.node, None)
            if silence is not None:
                _unsilence(api, silence, report)
        if waiting:
            sleep(poll_s)


def _advance(watch: _Watch, view: Mapping[str, Any] | None, plan: RollPlan, report: Report) -> bool:
    """Move a watch on from what the view shows; True once the node is back with metrics."""
    if view is None:
        return False
    online = view.get("state") == "online"
    # The master stamps `state_since` when it hears online/offline change: a new value while
    # online means the node went down and came up again, even between two polls.
    moved = view.get("state_since") != watch.since0
    if not watch.down and (not online or moved):
        watch.down = True
        report(f"{watch.node}: down")
    if watch.down and not watch.up and online and moved:
        watch.up = True
        watch.up_metrics_ts = _metrics_ts(view)
        report(f"{watch.node}: online again, waiting for a new metrics sample")
    if not (watch.up and online):
        return False
    latest = _metrics_ts(view)
    # Only a sample stamped after the one the node had when seen back (or after the task)
    # counts: an old sample sent late from its spool does not move `metrics_ts` forward.
    return latest is not None and (watch.up_metrics_ts is None or latest > watch.up_metrics_ts)


def _accepted(plan: RollPlan) -> str:
    return "reboot accepted" if plan.reboots else f"{plan.command} answered ok"


def _metrics_ts(view: Mapping[str, Any] | None) -> float | None:
    value = (view or {}).get("metrics_ts")
    return float(value) if isinstance(value, int | float) else None


def _silence(api: RollApi, node: str, plan: RollPlan, report: Report) -> int | None:
    try:
        silence = api.silence(node, plan.timeout_s + SILENCE_MARGIN_S, plan.comment)
    except ApiError as error:
        silence = None
        logger.warning("cannot silence %s: %s", node, error)
    if silence is None:
        report(f"{node}: alerts could not be silenced; going on")
    return silence


def _unsilence(api: RollApi, silence_id: int, report: Report) -> None:
    try:
        api.unsilence(silence_id)
    except ApiError as error:
        report(f"silence {silence_id} could not be ended ({error}); it ends by itself")


class HttpRollApi:
    """`RollApi` over the master's HTTP API (token from CLUSTER_API_TOKEN)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def send_many(
        self, nodes: Sequence[str], command: str, args: Mapping[str, Any], timeout_s: float
    ) -> list[dict[str, Any]]:
        """`POST /api/commands` for these nodes; a refused request becomes a row per node."""
        body = {"command": command, "args": dict(args), "timeout_s": timeout_s, "nodes": nodes}
        status, answer = api_call(self.base, "POST", "/api/commands", body, timeout_s + 15)
        if status != 200:
            error = f"the master refused: {detail_of(answer)} (HTTP {status})"
            return [{"node": node, "ok": False, "error": error} for node in nodes]
        rows: list[dict[str, Any]] = answer["results"]
        return rows

    def view(self, node: str) -> Mapping[str, Any] | None:
        """`GET /api/nodes/{node}`."""
        path = f"/api/nodes/{urllib.parse.quote(node, safe='')}"
        status, answer = api_call(self.base, "GET", path)
        if status == 404:
            return None
        if status != 200:
            raise ApiError(f"GET {path}: {detail_of(answer)} (HTTP {status})")
        view: Mapping[str, Any] = answer
        return view

    def silence(self, node: str, for_s: float, comment: str) -> int | None:
        """`POST /api/alerts/silences` for every rule of the node."""
        body = {"node": node, "rule": None, "for": round(for_s, 3), "comment": comment}
        status, answer = api_call(self.base, "POST", "/api/alerts/silences", body)
        if status not in (200, 201):
            logger.warning("silence for %s refused: %s (HTTP %s)", node, answer, status)
            return None
        return int(answer["id"])

    def unsilence(self, silence_id: int) -> None:
        """`DELETE /api/alerts/silences/{id}`."""
        status, answer = api_call(self.base, "DELETE", f"/api/alerts/silences/{silence_id}")
        if status not in (204, 404):  # 404: it ended already
            raise ApiError(f"{detail_of(answer)} (HTTP {status})")
