"""Choosing nodes by names, a tag or all; pure, so the command line needs no master extra."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class SelectionError(ValueError):
    """The selection is not exactly one of: names, a tag, all."""


def view_tags(view: Mapping[str, Any]) -> list[str]:
    """A node view's tags; a view without them (older masters) has none."""
    tags = view.get("tags")
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def select_nodes(
    views: Iterable[Mapping[str, Any]],
    nodes: Sequence[str] | None = None,
    tag: str | None = None,
    everyone: bool = False,
) -> list[str]:
    """The node ids chosen by names (in the order given, repeats dropped), a tag, or all.

    Names are kept even when no view has them: the caller reports them as unknown. Tag and
    all give known nodes only, sorted by id.
    """
    given = sum((nodes is not None, tag is not None, everyone))
    if given != 1:
        raise SelectionError("choose the nodes one way: names, a tag, or all")
    if nodes is not None:
        return list(dict.fromkeys(nodes))
    known = sorted(str(view["node"]) for view in views if tag is None or tag in view_tags(view))
    return known
