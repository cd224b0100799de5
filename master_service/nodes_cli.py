"""`cluster-master nodes ...`: the fleet's nodes: enrollment (add, remove) and tags."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from cluster_protocol.node_id import NodeIdError, validate_node_id
from cluster_protocol.tags import tag_problem
from master_service.api_client import ApiError, api_base, api_call, detail_of
from master_service.cli_output import complainer, out

_out = out
_err = complainer("cluster-master nodes")


def add_parser(commands: Any, api_help: str) -> None:
    """Add `nodes` and its subcommands to the `cluster-master` parser."""
    nodes = commands.add_parser("nodes", help="the fleet's nodes: add, remove, tags")
    actions = nodes.add_subparsers(dest="nodes_command", required=True)
    add = actions.add_parser(
        "add", help="create a node's broker client and print the one command to run on it"
    )
    add.add_argument("node", help="the new node's id")
    add.add_argument(
        "--master-url", help="the master's address as the node reaches it (default: this host)"
    )
    add.add_argument("--broker", help="broker URL for the node (default: the master's host)")
    add.add_argument("--api", help=api_help)
    remove = actions.add_parser(
        "remove", help="delete a node's broker client (disconnected at once) and forget it"
    )
    remove.add_argument("node", help="node id")
    remove.add_argument("--api", help=api_help)
    for name, text in (("tag", "add a master-side tag to a node"), ("untag", "remove one")):
        action = actions.add_parser(name, help=text)
        action.add_argument("node", help="node id")
        action.add_argument("tag", help="the tag")
        action.add_argument("--api", help=api_help)


def run(args: argparse.Namespace) -> int:
    """Run one `nodes` subcommand.

    Exit status: 0 done, 1 nothing to untag or remove, 2 a bad node id or tag, 4 the master
    could not be reached or refused.
    """
    node = args.node
    try:
        validate_node_id(node)
    except NodeIdError as error:
        _err(f"bad node id {node!r}: {error}")
        return 2
    if args.nodes_command == "add":
        return _add(args, node)
    if args.nodes_command == "remove":
        return _remove(args, node)
    tag = args.tag
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


def _add(args: argparse.Namespace, node: str) -> int:
    """`nodes add NODE`: the broker client, a one-time token, the command to run on the node."""
    body: dict[str, Any] = {"node": node}
    if args.master_url:
        body["master_url"] = args.master_url
    if args.broker:
        body["broker"] = args.broker
    try:
        status, answer = api_call(api_base(args.api), "POST", "/api/enrollments", body, 20.0)
    except ApiError as error:
        _err(str(error))
        return 4
    if status != 201 or not isinstance(answer, dict):
        _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
        return 4
    _out(f"broker client {node} is ready. Run this on the new node (the token works once,")
    _out("for an hour; `nodes add` again makes a new one):")
    _out("")
    _out(f"  {answer['command']}")
    return 0


def _remove(args: argparse.Namespace, node: str) -> int:
    """`nodes remove NODE`: delete its broker client and forget it."""
    path = f"/api/enrollments/{urllib.parse.quote(node, safe='')}"
    try:
        status, answer = api_call(api_base(args.api), "DELETE", path, timeout_s=20.0)
    except ApiError as error:
        _err(str(error))
        return 4
    if status != 200 or not isinstance(answer, dict):
        _err(f"the master refused: {detail_of(answer)} (HTTP {status})")
        return 4
    client = "deleted" if answer.get("client_deleted") else "not found"
    known = "forgotten" if answer.get("forgotten") else "not known to the master"
    _out(f"{node}: broker client {client} (disconnected), node {known}")
    return 0 if answer.get("client_deleted") or answer.get("forgotten") else 1
