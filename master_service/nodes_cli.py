"""`cluster-master nodes ...`: the fleet's nodes (tags now; enrollment later)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any, api_help: str) -> None:
    """Add `nodes` and its subcommands to the `cluster-master` parser."""
    nodes = commands.add_parser("nodes", help="the fleet's nodes: tags")
    actions = nodes.add_subparsers(dest="nodes_command", required=True)
    for name, text in (("tag", "add a master-side tag to a node"), ("untag", "remove one")):
        action = actions.add_parser(name, help=text)
        action.add_argument("node", help="node id")
        action.add_argument("tag", help="the tag")
        action.add_argument("--api", help=api_help)


def run(args: argparse.Namespace) -> int:
    """Run one `nodes` subcommand."""
    raise NotImplementedError(args.nodes_command)
