"""Contract tests: the pieces that must move together, checked together."""

from __future__ import annotations

import cluster_protocol
from cluster_protocol import MessageType
from master_service.ingest.router import HANDLERS


def test_every_message_type_has_a_handler():
    assert set(HANDLERS) == set(MessageType)


def test_protocol_exports_are_sorted_and_complete():
    exported = cluster_protocol.__all__
    assert exported == sorted(exported, key=lambda name: (not name.isupper(), name))
    public = {
        name
        for name, value in vars(cluster_protocol).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("cluster_protocol")
    }
    assert public <= set(exported)
    for name in exported:
        assert hasattr(cluster_protocol, name), name
