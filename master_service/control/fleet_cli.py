"""`cluster-master send/reboot/task` to many nodes: fan-out tables and rolling waves."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from master_service.alerts.durations import parse_duration
from master_service.api_client import ApiError, api_base, api_call, detail_of
from master_service.cli_output import complainer, out
from master_service.control.rolling import HttpRollApi, RollPlan, not_online, roll
from master_service.control.selection import SelectionError, select_nodes

DEFAULT_ROLL_TIMEOUT: Final = "5m"
REBOOT_REPLY_TIMEOUT_S: Final = 30.0  # a node accepts a reboot at once; more is no answer
MAX_REPLY_TIMEOUT_S: Final = 120.0
RESULT_WIDTH: Final = 72

Write = Callable[[str], None]


_out = out
_err = complainer("cluster-master")


def add_selection(parser: argparse.ArgumentParser) -> None:
    """`--tag` and `--all`, the ways besides names to choose nodes."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--tag", help="the nodes that carry this tag")
    choice.add_argument("--all", action="store_true", help="every node the master knows")


def add_roll_options(parser: argparse.ArgumentParser, what: str) -> None:
    """`--rolling`, `--max-unavailable`, `--timeout`."""
    parser.add_argument(
        "--rolling", action="store_true", help=f"{what} in waves, each node back before the next"
    )
    parser.add_argument(
        "--max-unavailable",
        type=int,
        default=1,
        metavar="N",
        help="nodes per wave when rolling (default 1)",
    )
    parser.add_argument(
        "--timeout",
        default=DEFAULT_ROLL_TIMEOUT,
        metavar="DURATION",
        help=f"how long each node may take (90, 90s, 5m; default {DEFAULT_ROLL_TIMEOUT})",
    )


def add_parsers(commands: Any, api_help: str) -> None:
    """Add `reboot` and `task` to the `cluster-master` parser (`send` stays in cli.py)."""
    reboot = commands.add_parser(
        "reboot", help="reboot nodes, all at once or --rolling in waves", allow_abbrev=False
    )
    reboot.add_argument("nodes", nargs="*", metavar="NODE", help="node ids")
    add_selection(reboot)
    add_roll_options(reboot, "reboot")
    reboot.add_argument("--json", action="store_true", help="print the answers as JSON")
    reboot.add_argument("--api", help=api_help)
    task = commands.add_parser(
        "task", help="run a node task on nodes, all at once or --rolling", allow_abbrev=False
    )
    task.add_argument("task", help="the task's name, as defined in the nodes' config")
    task.add_argument("nodes", nargs="*", metavar="NODE", help="node ids")
    add_selection(task)
    task.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="a task argument"
    )
    add_roll_options(task, "run it")
    task.add_argument("--json", action="store_true", help="print the answers as JSON")
    task.add_argument("--api", help=api_help)


def parse_timeout(text: str) -> float:
    """Seconds from `90`, `90s`, `5m`, `1h`; ValueError when it is not one of those."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"--timeout must be more than 0 seconds, got {text!r}")
    return seconds


def selection_body(args: argparse.Namespace, nodes: Sequence[str]) -> dict[str, Any]:
    """The `nodes`/`tag`/`all` part of a `POST /api/commands` body."""
    if args.tag is not None:
        return {"tag": args.tag}
    if args.all:
        return {"all": True}
    return {"nodes": list(nodes)}


def check_selection(args: argparse.Namespace, nodes: Sequence[str]) -> str | None:
    """What is wrong with the way nodes were chosen, or None."""
    if (args.tag is not None or args.all) and nodes:
        return "give node names or --tag or --all, not both"
    if args.tag is None and not args.all and not nodes:
        return "name the nodes, or use --tag TAG or --all"
    return None


def fan_out_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """node, ok, result or error, time: one line per node, columns padded."""
    table = [("NODE", "OK", "RESULT / ERROR", "TIME")]
    for row in rows:
        text = row.get("error") if not row.get("ok") else _compact(row.get("result"))
        if not row.get("ok") and row.get("status"):
            text = f"{row['status']}: {text}"
        table.append(
            (
                str(row.get("node")),
                "yes" if row.get("ok") else "NO",
                _shorten(str(text)),
                f"{float(row.get('duration_s') or 0):.2f} s",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _compact(value: Any) -> str:
    if isinstance(value, dict) and "exit_code" in value and "stdout" in value:
        # A task's answer: what it printed matters more than its bookkeeping.
        return f"exit {value['exit_code']}: {value['stdout']}".strip()
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _shorten(text: str) -> str:
    text = " ".join(text.split())  # task output over several lines stays on one
    return text if len(text) <= RESULT_WIDTH else text[: RESULT_WIDTH - 1] + "…"


def run_fan_out(
    base: str,
    command: str,
    command_args: Mapping[str, Any],
    selection: Mapping[str, Any],
    timeout_s: float,
    as_json: bool,
) -> int:
    """`POST /api/commands` and print the table; 0 when every node answered ok."""
    body = {"command": command, "args": dict(command_args), "timeout_s": timeout_s, **selection}
    try:
        status, answer = api_call(base, "POST", "/api/commands", body, timeout_s=timeout_s + 15)
    except ApiError as error:
        _err(str(error))
        return 4
    if status != 200:
        _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
        return 4
    rows = answer["results"]
    if as_json:
        _out(json.dumps(answer, indent=2, sort_keys=True))
    elif rows:
        _out(fan_out_table(rows))
    if not rows:
        _err(f"no node matched {_describe(selection)}")
        return 1
    failed = [row["node"] for row in rows if not row["ok"]]
    if failed:
        _err(f"{len(failed)} of {len(rows)} nodes did not answer {command} ok: {', '.join(failed)}")
        return 1
    return 0


def _describe(selection: Mapping[str, Any]) -> str:
    if "tag" in selection:
        return f"tag {selection['tag']!r}"
    return "(the master knows no nodes)" if "all" in selection else "the names given"


def run_reboot(args: argparse.Namespace) -> int:
    """Reboot nodes at once, or roll; 0 when all went through, 1 not, 2 bad use, 4 master."""
    return _run_power_or_task(args, "reboot", {}, REBOOT_REPLY_TIMEOUT_S)


def run_task(
    args: argparse.Namespace, parse_args: Callable[[Sequence[str]], dict[str, Any]]
) -> int:
    """Run a task on nodes at once, or roll; exit codes as `reboot`."""
    try:
        task_args = parse_args(args.arg)
    except ValueError as error:
        _err(str(error))
        return 2
    return _run_power_or_task(args, "run", {"task": args.task, "args": task_args}, None)


def _run_power_or_task(
    args: argparse.Namespace,
    command: str,
    command_args: Mapping[str, Any],
    reply_cap_s: float | None,
) -> int:
    problem = check_selection(args, args.nodes)
    try:
        timeout_s = parse_timeout(args.timeout)
    except ValueError as error:
        problem = problem or str(error)
        timeout_s = 0.0
    if args.max_unavailable < 1:
        problem = problem or "--max-unavailable must be at least 1"
    if problem:
        _err(problem)
        return 2
    reply_timeout = min(timeout_s, reply_cap_s or MAX_REPLY_TIMEOUT_S, MAX_REPLY_TIMEOUT_S)
    base = api_base(args.api)
    if not args.rolling:
        selection = selection_body(args, args.nodes)
        return run_fan_out(base, command, command_args, selection, reply_timeout, args.json)
    comment = "rolling reboot" if command == "reboot" else f"rolling task {args.task}"
    plan = RollPlan(command, command_args, args.max_unavailable, timeout_s, reply_timeout, comment)
    return run_roll(base, args, plan)


def run_roll(base: str, args: argparse.Namespace, plan: RollPlan) -> int:
    """Resolve the nodes, check they are all online, roll, and say how it ended."""
    api = HttpRollApi(base)
    try:
        nodes = _resolve(base, args)
        if not nodes:
            _err("no node matched " + _describe(selection_body(args, args.nodes)))
            return 1
        down = not_online(api, nodes)
        if down:
            listed = ", ".join(f"{node} ({state})" for node, state in down.items())
            _err(f"not rolling: every chosen node must be online first; not online: {listed}")
            return 1
        started = time.monotonic()

        def report(line: str) -> None:
            _out(f"[{time.monotonic() - started:7.1f} s] {line}")

        what = "reboot" if plan.reboots else f"task {args.task}"
        report(
            f"rolling {what} over {len(nodes)} nodes, {plan.max_unavailable} at a time, "
            f"each within {plan.timeout_s:g} s"
        )
        outcome = roll(api, nodes, plan, report)
    except ApiError as error:
        _err(str(error))
        return 4
    except KeyboardInterrupt:  # the wave's silences were ended on the way out
        _err("roll interrupted; nothing more is sent (a node of the current wave may be down)")
        return 130
    if outcome.ok:
        report(f"done: {len(outcome.done)} of {len(nodes)} nodes")
        return 0
    for node, reason in outcome.failed.items():
        _err(f"roll stopped at {node}: {reason}")
    _err(
        f"{len(outcome.done)} of {len(nodes)} nodes done"
        + (f"; left alone: {', '.join(outcome.untouched)}" if outcome.untouched else "")
    )
    return 1


def _resolve(base: str, args: argparse.Namespace) -> list[str]:
    """The node ids chosen by names, --tag or --all (tags from the node views)."""
    if args.tag is None and not args.all:
        return select_nodes([], nodes=args.nodes)
    status, answer = api_call(base, "GET", "/api/nodes")
    if status != 200:
        raise ApiError(f"GET /api/nodes: {detail_of(answer)} (HTTP {status})")
    try:
        return select_nodes(answer["nodes"], tag=args.tag, everyone=args.all)
    except SelectionError as error:  # argparse already keeps --tag and --all apart
        raise ApiError(str(error)) from error
