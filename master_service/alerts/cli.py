"""`cluster-master alerts ...`: what fires, the history, silences and a test notification."""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from master_service.alerts.durations import format_duration, parse_duration
from master_service.api_client import ApiError, api_base, api_call, detail_of
from master_service.cli_output import complainer, out

_out = out
_err = complainer("cluster-master alerts")


def add_parser(commands: Any, api_help: str) -> None:
    """Add `alerts` and its subcommands to the `cluster-master` parser."""
    alerts = commands.add_parser("alerts", help="alerts: list, history, test, silences")
    actions = alerts.add_subparsers(dest="alerts_command", required=True)
    listing = actions.add_parser("list", help="the alerts firing now")
    history = actions.add_parser("history", help="what fired and resolved, newest first")
    history.add_argument("--node", help="one node only")
    history.add_argument("--limit", type=int, default=20, help="events to show (default 20)")
    test = actions.add_parser(
        "test", help="send a test notification through each channel; exit 1 if any refused"
    )
    test.add_argument("--channel", type=int, metavar="N", help="only channel N (from 0)")
    silence = actions.add_parser(
        "silence", help="mute a node's notifications for a while (maintenance)"
    )
    silence.add_argument("node", help="node id, or a glob such as 'rack1-*'")
    silence.add_argument("--rule", help="only this rule (default: every rule)")
    silence.add_argument(
        "--for", dest="duration", required=True, help='how long: seconds, or "90s", "5m", "2h"'
    )
    silence.add_argument("--comment", default="", help="why (shown in the API and dashboard)")
    silences = actions.add_parser("silences", help="the silences not yet ended")
    unsilence = actions.add_parser("unsilence", help="end a silence now")
    unsilence.add_argument("id", type=int, help="the silence's id (see `alerts silences`)")
    for sub in (listing, history, test, silence, silences, unsilence):
        sub.add_argument("--api", help=api_help)
        sub.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    """Run one `alerts` subcommand; exit 4 when the master cannot be reached or refuses."""
    action: Callable[[argparse.Namespace, str], int] = {
        "list": _list,
        "history": _history,
        "test": _test,
        "silence": _silence,
        "silences": _silences,
        "unsilence": _unsilence,
    }[args.alerts_command]
    try:
        return action(args, api_base(args.api))
    except ApiError as error:
        _err(str(error))
        return 4


def _call(base: str, method: str, path: str, body: Any = None, timeout_s: float = 10.0) -> Any:
    status, answer = api_call(base, method, path, body, timeout_s=timeout_s)
    if status >= 400:
        raise ApiError(f"the master refused: {detail_of(answer)} (HTTP {status})")
    return answer


def _ago(ts: float) -> str:
    return format_duration(max(0.0, time.time() - ts)) + " ago"


def _value(value: Any) -> str:
    return "" if value is None else f"{value:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in (header, *rows)]  # fmt: skip
    return "\n".join(lines)


def _list(args: argparse.Namespace, base: str) -> int:
    answer = _call(base, "GET", "/api/alerts")
    if args.json:
        _out(json.dumps(answer, indent=2))
        return 0
    alerts = answer["alerts"]
    if not alerts:
        _out("nothing fires")
        return 0
    rows = [
        (a["node"], a["rule"], a["severity"], _value(a["value"]), _ago(a["since"]),
         "silenced" if a["silenced"] else ("flapping" if a["flapping"] else ""), a["detail"])
        for a in alerts
    ]  # fmt: skip
    header = ("NODE", "RULE", "SEVERITY", "VALUE", "SINCE", "MUTED", "DETAIL")
    _out(_table(header, rows))
    return 0


def _history(args: argparse.Namespace, base: str) -> int:
    query = {"limit": str(args.limit)} | ({"node": args.node} if args.node else {})
    answer = _call(base, "GET", "/api/alerts/history?" + urllib.parse.urlencode(query))
    if args.json:
        _out(json.dumps(answer, indent=2))
        return 0
    rows = [
        (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["node"], e["rule"],
         e["event"], "yes" if e["notified"] else "no", e["message"])
        for e in answer["events"]
    ]  # fmt: skip
    _out(_table(("AT", "NODE", "RULE", "EVENT", "SENT", "MESSAGE"), rows) if rows else "no events")
    return 0


def _test(args: argparse.Namespace, base: str) -> int:
    answer = _call(base, "POST", "/api/alerts/test", {"channel": args.channel}, timeout_s=60.0)
    results = answer["results"]
    if args.json:
        _out(json.dumps(answer, indent=2))
    else:
        rows = [
            (str(r["channel"]), r["label"], "accepted" if r["accepted"] else "REFUSED",
             r["error"] or "")
            for r in results
        ]  # fmt: skip
        _out(_table(("CHANNEL", "SERVICE", "RESULT", "ERROR"), rows))
    return 0 if all(r["accepted"] for r in results) else 1


def _silence(args: argparse.Namespace, base: str) -> int:
    try:
        seconds = parse_duration(args.duration)
    except ValueError as error:
        _err(f"--for {error}")
        return 2
    body = {"node": args.node, "rule": args.rule, "for": seconds, "comment": args.comment}
    silence = _call(base, "POST", "/api/alerts/silences", body)
    if args.json:
        _out(json.dumps(silence, indent=2))
    else:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(silence["ends"]))
        what = silence["rule"] or "every rule"
        _out(f"silence {silence['id']}: {silence['node']} ({what}) muted until {until}")
    return 0


def _silences(args: argparse.Namespace, base: str) -> int:
    answer = _call(base, "GET", "/api/alerts/silences")
    if args.json:
        _out(json.dumps(answer, indent=2))
        return 0
    rows = [
        (str(s["id"]), s["node"], s["rule"] or "*",
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["ends"])), s["comment"])
        for s in answer["silences"]
    ]  # fmt: skip
    _out(_table(("ID", "NODE", "RULE", "UNTIL", "COMMENT"), rows) if rows else "no silences")
    return 0


def _unsilence(args: argparse.Namespace, base: str) -> int:
    status, answer = api_call(base, "DELETE", f"/api/alerts/silences/{args.id}")
    if status == 404:
        _err(f"there is no silence {args.id}")
        return 1
    if status >= 400:
        raise ApiError(f"the master refused: {detail_of(answer)} (HTTP {status})")
    if not args.json:
        _out(f"silence {args.id} ended")
    return 0
