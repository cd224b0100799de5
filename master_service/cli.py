"""`cluster-master`: run the master, or ask a running one about the cluster."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cluster_protocol.commands import CommandName
from cluster_protocol.config import SettingsError
from master_service import nodes_cli
from master_service.alerts import cli as alerts_cli
from master_service.api_client import DEFAULT_API, ApiError, api_call, detail_of
from master_service.auth import cli as users_cli
from master_service.cli_output import complainer, out
from master_service.control import fleet_cli
from master_service.control.placement import render_placement
from master_service.settings import MasterSettings, build_parser, load_settings
from master_service.status_table import render_table
from master_service.storage.database import DatabaseUnavailableError, database_errors

logger = logging.getLogger(__name__)


_out = out
_err = complainer("cluster-master")


def parser() -> argparse.ArgumentParser:
    """The command line: run, status, send, reboot, task, place, forget, alerts, nodes."""
    top = argparse.ArgumentParser(prog="cluster-master", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    # No abbreviations: `--password` must not quietly mean `--password-file`.
    build_parser(commands.add_parser("run", help="run the master service", allow_abbrev=False))
    status = commands.add_parser("status", help="print a table of nodes from a running master")
    status.add_argument("--api", help=f"master API URL (env CLUSTER_API, default {DEFAULT_API})")
    status.add_argument("--json", action="store_true", help="print the nodes as JSON")
    status.add_argument("--watch", action="store_true", help="refresh in place every 2 s")
    _add_control_parsers(commands)
    return top


def _add_control_parsers(commands: Any) -> None:
    api_help = f"master API URL (env CLUSTER_API, default {DEFAULT_API})"
    send = commands.add_parser(
        "send",
        help="send a command to a node (or many) and print the reply (token: CLUSTER_API_TOKEN)",
        usage="%(prog)s [NODE ...] COMMAND [--tag TAG | --all] [--arg KEY=VALUE] [--timeout S]",
    )
    send.add_argument(
        "words",
        nargs="+",
        metavar="NODE... COMMAND",
        help=f"node ids (none with --tag/--all), then the command: {', '.join(CommandName)}",
    )
    fleet_cli.add_selection(send)
    send.add_argument("--json", action="store_true", help="many nodes: print the answer as JSON")
    send.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="command argument; VALUE is read as JSON when it parses (5, true, {...}), else text",
    )
    send.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    send.add_argument("--api", help=api_help)
    place = commands.add_parser("place", help="which nodes fit a piece of work, best first")
    place.add_argument("--min-ram", help="memory available now, e.g. 512MiB, 2GiB, 2G")
    place.add_argument("--min-cores", type=int, help="at least this many CPU cores")
    place.add_argument("--max-cpu-percent", type=float, help="at most this busy now (0-100)")
    place.add_argument("--arch", help="CPU architecture, e.g. aarch64 (arm64), x86_64 (amd64)")
    place.add_argument("--count", type=int, default=1, help="how many nodes are wanted")
    place.add_argument("--tag", help="consider only the nodes that carry this tag")
    place.add_argument("--json", action="store_true", help="print the answer as JSON")
    place.add_argument("--api", help=api_help)
    forget = commands.add_parser("forget", help="forget a node (state, history, commands)")
    forget.add_argument("node", help="node id")
    forget.add_argument("--api", help=api_help)
    fleet_cli.add_parsers(commands, api_help)
    alerts_cli.add_parser(commands, api_help)
    nodes_cli.add_parser(commands, api_help)
    users_cli.add_parser(commands)


def parse_command_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs to a dict; VALUE as JSON when it parses, else as text."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg {pair!r} must be KEY=VALUE")
        try:
            args[key] = json.loads(raw)
        except ValueError:
            args[key] = raw
    return args


def run_send(args: argparse.Namespace) -> int:
    """Send a command; exit 0 on an ok reply, 1 on an error reply, 3 on no reply, 4 refused.

    With several nodes, `--tag` or `--all` it is sent to each at once and a table printed:
    exit 0 when every node answered ok, 1 when any did not.
    """
    base = args.api or os.environ.get("CLUSTER_API") or DEFAULT_API
    *nodes, args.name = args.words
    try:
        command_args = parse_command_args(args.arg)
    except ValueError as error:
        _err(str(error))
        return 2
    problem = fleet_cli.check_selection(args, nodes)
    if problem:
        _err(problem)
        return 2
    if len(nodes) != 1:
        selection = fleet_cli.selection_body(args, nodes)
        return fleet_cli.run_fan_out(
            base, args.name, command_args, selection, args.timeout, args.json
        )
    args.node = nodes[0]
    body = {"command": args.name, "args": command_args, "timeout_s": args.timeout}
    path = f"/api/nodes/{urllib.parse.quote(args.node, safe='')}/commands"
    try:
        status, answer = api_call(base, "POST", path, body, timeout_s=args.timeout + 10)
    except ApiError as error:
        _err(str(error))
        return 4
    if status == 504:
        _err(
            f"no reply from {args.node} to {args.name} within {args.timeout:g} s "
            f"(command id {answer.get('id')}); is the node running and connected?"
        )
        return 3
    if status != 200:
        _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
        return 4
    if answer.get("result") is not None:
        _out(json.dumps(answer["result"], indent=2, sort_keys=True))
    if answer.get("ok"):
        return 0
    _err(f"{args.node} answered {args.name} with an error: {answer.get('error')}")
    return 1


def run_place(args: argparse.Namespace) -> int:
    """Print where work fits; exit 0 when `--count` nodes fit, 1 otherwise."""
    base = args.api or os.environ.get("CLUSTER_API") or DEFAULT_API
    body = {
        "min_ram": args.min_ram,
        "min_cores": args.min_cores,
        "max_cpu_percent": args.max_cpu_percent,
        "arch": args.arch,
        "count": args.count,
    }
    if args.tag is not None:  # left out otherwise, so an older master still answers
        body["tag"] = args.tag
    try:
        status, answer = api_call(base, "POST", "/api/placement", body)
    except ApiError as error:
        _err(str(error))
        return 4
    if status != 200:
        _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
        return 4
    _out(json.dumps(answer, indent=2) if args.json else "\n".join(render_placement(answer)))
    return 0 if answer["satisfied"] else 1


def run_forget(args: argparse.Namespace) -> int:
    """Forget a node; exit 1 when the master does not know it."""
    base = args.api or os.environ.get("CLUSTER_API") or DEFAULT_API
    path = f"/api/nodes/{urllib.parse.quote(args.node, safe='')}"
    try:
        status, answer = api_call(base, "DELETE", path)
    except ApiError as error:
        _err(str(error))
        return 4
    if status != 200:
        _err(f"{detail_of(answer)} (HTTP {status})")
        return 1 if status == 404 else 4
    _out(f"forgot {args.node}")
    return 0


def api_get(base: str, path: str, timeout_s: float = 5.0) -> Any:
    """GET a JSON document from the master's API (with CLUSTER_API_TOKEN when set)."""
    status, answer = api_call(base, "GET", path, timeout_s=timeout_s)
    if status != 200:
        raise ApiError(f"{detail_of(answer)} (HTTP {status})")
    return answer


def run_status(args: argparse.Namespace) -> int:
    """Print the node table (or JSON), once or repeatedly."""
    base = args.api or os.environ.get("CLUSTER_API") or DEFAULT_API
    while True:
        try:
            nodes = api_get(base, "/api/nodes")["nodes"]
        except (ApiError, KeyError, TypeError) as error:
            _err(f"cannot read {base}/api/nodes: {error}")
            return 1
        if args.json:
            _out(json.dumps(nodes, indent=2, sort_keys=True))
        elif args.watch:
            _out("\x1b[H\x1b[2J" + render_table(nodes))  # home + clear: redraw in place
        else:
            _out(render_table(nodes))
        if not args.watch:
            return 0
        time.sleep(2.0)


def run_master(args: argparse.Namespace) -> int:
    """Validate settings, then run the master until it is stopped."""
    try:
        settings = load_settings(args, os.environ)
    except SettingsError as error:
        _err(f"bad setting {error}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Apprise logs every refused attempt itself; delivery reports each outage once, with the
    # reason it reads from Apprise's result.
    logging.getLogger("apprise").propagate = False
    from master_service.app import build, dashboard_url  # the master extra is needed only here

    if settings.several_masters:
        from master_service.peers.leadership import LeaderLock
        from master_service.peers.run import run_several
        from master_service.storage.store import Store

        def run_one_of_several() -> int:
            Store(settings.database).close()  # migrated first: the lock keeps a row in it
            lock = LeaderLock(settings.database, settings.client_id, dashboard_url(settings))
            return run_several(
                settings,
                lock,
                lambda role, lock: _opened(settings, lambda: build(settings, role=role, lock=lock)),
            )

        return _opened(settings, run_one_of_several)
    service = _opened(settings, lambda: build(settings))
    if isinstance(service, int):
        return service
    service.serve()
    return 0


T = TypeVar("T")


def _opened(settings: MasterSettings, open_it: Callable[[], T]) -> T | int:
    """What `open_it` gives, or the exit status after a clear line on why it could not."""
    # Not settings (those exit 2): a disk or a database server that may come back, exit 1.
    unusable: tuple[type[BaseException], ...] = (OSError, *database_errors())
    try:
        return open_it()
    except SettingsError as error:  # e.g. a CA file that exists but does not load
        _err(f"bad setting {error}")
        return 2
    except DatabaseUnavailableError as error:
        _err(str(error))  # it names the server; exit 1, so systemd tries again
        return 1
    except unusable as error:
        _err(f"cannot open the database {settings.database.name}: {error}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cluster-master`."""
    args = parser().parse_args(argv)
    if args.command == "run":
        return run_master(args)
    control = {
        "send": run_send,
        "reboot": fleet_cli.run_reboot,
        "task": lambda args: fleet_cli.run_task(args, parse_command_args),
        "place": run_place,
        "forget": run_forget,
        "alerts": alerts_cli.run,
        "nodes": nodes_cli.run,
        "users": users_cli.run,
    }.get(args.command)
    if control is not None:
        return control(args)
    try:
        return run_status(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
