"""Node tags: short names that group nodes (`rack1`, `poe`), safe as one topic level."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

TAG_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
"""A tag: lower-case letters, digits, `_`, `.` and `-`, starting with a letter or digit."""


def tag_problem(tag: object) -> str | None:
    """None when `tag` is a valid tag, else what is wrong with it."""
    if isinstance(tag, str) and TAG_PATTERN.match(tag):
        return None
    return (
        "a tag must be 1-63 characters of a-z, 0-9, '_', '.' or '-', starting with a "
        f"letter or digit, got {tag!r}"
    )


def is_tag(tag: object) -> bool:
    """True for a valid tag."""
    return isinstance(tag, str) and TAG_PATTERN.match(tag) is not None


def valid_tags(raw: Any) -> tuple[str, ...]:
    """The valid tags of a received list, sorted and without repeats (anything else: none)."""
    if not isinstance(raw, list | tuple):
        return ()
    return tuple(sorted({tag for tag in raw if is_tag(tag)}))


def split_tags(parts: Iterable[str]) -> tuple[str, ...]:
    """Tags from words that may hold several separated by commas (`rack1,poe`), in order."""
    found: list[str] = []
    for part in parts:
        for tag in part.split(","):
            tag = tag.strip()
            if tag and tag not in found:
                found.append(tag)
    return tuple(found)
