"""docs/protocol.md is the contract a maintainer reads: it must name everything the code sends."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from cluster_protocol import MessageType, RejectCause
from cluster_protocol.schemas import (
    COMMAND_FIELDS,
    MACHINE_DETAILS_FIELDS,
    METRICS_FIELDS,
    REPLY_FIELDS,
    STATUS_FIELDS,
)
from master_service.state import ClusterState

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PROTOCOL_DOC = DOCS / "protocol.md"


def _table_text() -> str:
    """Only the table rows: a key mentioned in passing does not count as documented."""
    lines = PROTOCOL_DOC.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("|"))


def _undocumented(names: Iterable[str], text: str) -> list[str]:
    return sorted(name for name in names if f"`{name}`" not in text)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ("machine_details", MACHINE_DETAILS_FIELDS),
        ("metrics", METRICS_FIELDS),
        ("status", STATUS_FIELDS),
        ("reply", REPLY_FIELDS),
        ("command", COMMAND_FIELDS),
    ],
)
def test_every_payload_key_has_a_row(payload, fields):
    assert _undocumented(fields, _table_text()) == [], f"{payload} keys missing from the doc"


def test_every_cluster_summary_key_has_a_row():
    summary = ClusterState(clock=lambda: 0.0).summary()
    assert _undocumented(summary, _table_text()) == []


def test_every_message_type_and_reject_cause_is_named():
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    assert _undocumented((member.value for member in MessageType), text) == []
    assert _undocumented((cause.value for cause in RejectCause), text) == []


def _link_targets(doc: Path) -> list[str]:
    """Relative link targets of a Markdown page, without their #anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8"))
    return [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]


@pytest.mark.parametrize("doc", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_the_docs_stand_on_their_own(doc: Path) -> None:
    # A maintainer has only this repository: every page a doc links to must be in it.
    outside = [
        target
        for target in _link_targets(doc)
        if not (doc.parent / target).resolve().is_relative_to(REPO)
        or not (doc.parent / target).resolve().exists()
    ]
    assert outside == []
