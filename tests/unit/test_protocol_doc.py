"""docs/protocol.md is the contract a maintainer reads: it must name everything the code sends."""

from __future__ import annotations

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

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


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


def test_the_doc_stands_on_its_own():
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    for outside in ("FIELD_NOTES", "DESIGN.md", "../shared"):
        assert outside not in text
