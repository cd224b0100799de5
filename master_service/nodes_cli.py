"""`cluster-master nodes ...`: the fleet's nodes (tags now; enrollment later)."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from cluster_protocol.node_id import NodeIdError, validate_node_id
from cluster_protocol.tags import tag_problem
from master_service.api_client import ApiError, api_base, api_call, detail_of


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"cluster-master nodes: {text}\n")


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
    """Run one `nodes` subcommand.

    Exit status: 0 done, 1 nothing to untag, 2 a bad node id or tag, 4 the master could not
    be reached or refused.
    """
    node, tag = args.node, args.tag
    try:
        validate_node_id(node)
    except NodeIdError as error:
        _err(f"bad node id {node!r}: {error}")
        return 2
    problem = tag_problem(tag)
    if problem:
        _err(problem)
        return 2
    base = api_base(args.api)
    node_path = f"/api/nodes/{urllib.parse.quote(node, safe='')}"
    path = f"{node_path}/tags/{urllib.parse.quote(tag, safe='')}"
    method = "PUT" if args.nodes_command == "tag" else "DELETE"
    try:
        status, answer = api_call(base, method, path, timeout_s=35.0)
        if status == 404 and method == "DELETE":
            _err(f"{node} has no master-side tag {tag!r}{_own_hint(base, node_path, tag)}")
            return 1
        if status != 204:
            _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
            return 4
        view_status, view = api_call(base, "GET", node_path)
    except ApiError as error:
        _err(str(error))
        return 4
    verb = "tagged" if method == "PUT" else "untagged"
    if view_status != 200 or not isinstance(view, dict):
        _out(f"{verb} {node} {tag} (the master has not heard of {node} yet)")
        return 0
    tags = ", ".join(view.get("tags") or []) or "none"
    _out(f"{verb} {node} {tag}; its tags: {tags}")
    return 0


def _own_hint(base: str, node_path: str, tag: str) -> str:
    """A note when the tag is the node's own (set in its config, not on the master)."""
    try:
        status, view = api_call(base, "GET", node_path)
    except ApiError:
        return ""
    if status == 200 and isinstance(view, dict) and tag in (view.get("own_tags") or []):
        return " (it is the node's own tag: remove it from the node's `tags` setting)"
    return ""
