"""The TypedDicts in cluster_protocol.payloads stay in step with the run-time schemas."""

from __future__ import annotations

from typing import get_type_hints

import pytest

from cluster_protocol import payloads, schemas
from cluster_protocol.metrics import METRICS

PAIRS = [
    (payloads.MachineDetails, schemas.MACHINE_DETAILS_FIELDS),
    (payloads.MetricsPayload, schemas.METRICS_FIELDS),
    (payloads.StatusPayload, schemas.STATUS_FIELDS),
    (payloads.ReplyPayload, schemas.REPLY_FIELDS),
    (payloads.CommandPayload, schemas.COMMAND_FIELDS),
]


@pytest.mark.parametrize(("typed", "fields"), PAIRS, ids=lambda p: getattr(p, "__name__", ""))
def test_typed_payload_declares_exactly_the_schema_keys(typed, fields):
    assert set(get_type_hints(typed)) == set(fields)


def test_metrics_payload_keys_are_the_metric_table():
    in_payload = {m.key for m in METRICS if m.in_payload}
    assert set(get_type_hints(payloads.MetricsPayload)) == in_payload


def test_required_machine_details_are_the_original_five():
    assert payloads.MachineDetails.__required_keys__ == set(schemas.REQUIRED_MACHINE_DETAILS)


def test_throttle_flags_cover_every_decoded_bit():
    from node_publisher.pi import THROTTLE_BITS, decode_throttled

    decoded = decode_throttled("throttled=0x50005")
    assert decoded is not None
    assert set(decoded) == set(get_type_hints(payloads.ThrottleFlags))
    assert set(THROTTLE_BITS) <= set(decoded)
