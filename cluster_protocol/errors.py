"""Typed errors for everything the wire can get wrong."""

from __future__ import annotations

from enum import StrEnum


class RejectCause(StrEnum):
    """Why an incoming message was dropped; used as a counter label and in logs."""

    BAD_TOPIC = "bad_topic"
    BAD_NODE_ID = "bad_node_id"
    RESERVED_NODE = "reserved_node"
    UNKNOWN_TYPE = "unknown_type"
    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_FINITE = "not_finite"
    TOO_DEEP = "too_deep"
    NOT_OBJECT = "not_object"
    MISSING_KEY = "missing_key"
    BAD_VERSION = "bad_version"
    BAD_FIELD = "bad_field"
    TYPE_MISMATCH = "type_mismatch"
    NODE_MISMATCH = "node_mismatch"
    BAD_PAYLOAD = "bad_payload"


class EnvelopeError(ValueError):
    """A message that is not a valid envelope; `cause` says which rule it broke."""

    def __init__(self, cause: RejectCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause
