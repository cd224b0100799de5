"""`cluster-master`: run the master, or ask a running one about the cluster."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from cluster_protocol.config import SettingsError
from master_service.settings import build_parser, load_settings
from master_service.status_table import render_table

logger = logging.getLogger(__name__)

DEFAULT_API = "http://127.0.0.1:8080"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"cluster-master: {text}\n")


def parser() -> argparse.ArgumentParser:
    """The command line: run, status."""
    top = argparse.ArgumentParser(prog="cluster-master", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    build_parser(commands.add_parser("run", help="run the master service"))
    status = commands.add_parser("status", help="print a table of nodes from a running master")
    status.add_argument("--api", help=f"master API URL (env CLUSTER_API, default {DEFAULT_API})")
    status.add_argument("--json", action="store_true", help="print the nodes as JSON")
    status.add_argument("--watch", action="store_true", help="refresh in place every 2 s")
    return top


def api_get(base: str, path: str, timeout_s: float = 5.0) -> Any:
    """GET a JSON document from the master's API."""
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=timeout_s) as response:
        return json.load(response)


def run_status(args: argparse.Namespace) -> int:
    """Print the node table (or JSON), once or repeatedly."""
    base = args.api or os.environ.get("CLUSTER_API") or DEFAULT_API
    while True:
        try:
            nodes = api_get(base, "/api/nodes")["nodes"]
        except (urllib.error.URLError, OSError, ValueError) as error:
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
    from master_service.app import MasterService  # the master extra is needed only here

    MasterService(settings).serve()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cluster-master`."""
    args = parser().parse_args(argv)
    if args.command == "run":
        return run_master(args)
    try:
        return run_status(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
