"""Node-id rules: how a hostname becomes the id used in topics and broker usernames."""

from __future__ import annotations

import re
from typing import Final

NODE_ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RESERVED_PREFIX: Final = "_"
MASTER_NODE_ID: Final = "_master"
# Broker user names of the master and of Home Assistant: the ACL gives node ids their own
# subtree by user name, so a node must never be called like either of them.
RESERVED_USER_NAMES: Final = frozenset({"picluster-master", "homeassistant"})
_INVALID_CHARS: Final = re.compile(r"[^a-z0-9_-]")


class NodeIdError(ValueError):
    """A node id that breaks the rules; the message says which rule."""


def node_id_from_hostname(hostname: str) -> str:
    """Derive a node id from a hostname: lower-cased, other characters replaced by '-'."""
    candidate = _INVALID_CHARS.sub("-", hostname.strip().lower())
    # A hostname may start with '-' or '_' once cleaned (e.g. "_dev"); keep ids routable.
    candidate = candidate.lstrip("-_")[:63]
    validate_node_id(candidate)
    return candidate


def is_reserved_node_id(node_id: str) -> bool:
    """True for ids kept for the system itself (they begin with '_')."""
    return node_id.startswith(RESERVED_PREFIX)


def validate_node_id(node_id: str) -> str:
    """Return the id unchanged, or raise NodeIdError saying what is wrong with it."""
    if not node_id:
        raise NodeIdError("node id is empty")
    if is_reserved_node_id(node_id):
        raise NodeIdError(f"node id {node_id!r} is reserved (ids beginning with '_' are)")
    if node_id in RESERVED_USER_NAMES:
        raise NodeIdError(f"node id {node_id!r} is reserved for the broker user of that name")
    if not NODE_ID_PATTERN.match(node_id):
        raise NodeIdError(
            f"node id {node_id!r} must match {NODE_ID_PATTERN.pattern} "
            "(lower-case letters, digits, '_' and '-', at most 63 characters)"
        )
    return node_id
