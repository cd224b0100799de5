"""The v1 envelope: `{"v","type","node","ts","seq","payload"}` encoded, decoded and validated."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from cluster_protocol.errors import EnvelopeError, RejectCause
from cluster_protocol.schemas import validate_payload

_orjson: ModuleType | None
try:  # The master installs orjson (6x faster decode); the node gets by with the stdlib.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised on node-only installs
    _orjson = None

SCHEMA_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 32
ENVELOPE_KEYS: Final = ("v", "type", "node", "ts", "seq", "payload")
_MAX_INT: Final = 2**1023  # beyond this an integer does not fit a double (JSON's number)
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on the wire; `seq` is None only for the original two-key form."""

    type: str
    node: str
    ts: float
    seq: int | None
    # Any: checked against its type's schema when decoded; readers take it as that type's
    # TypedDict (cluster_protocol.payloads). A typed union here would cost a check per read.
    payload: Any
    v: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The envelope as the JSON object sent on the wire."""
        return {
            "v": self.v,
            "type": self.type,
            "node": self.node,
            "ts": self.ts,
            "seq": self.seq,
            "payload": self.payload,
        }


def encode_envelope(envelope: Envelope, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Encode to compact UTF-8 JSON; raise EnvelopeError when not finite or over the limit."""
    try:
        data = json.dumps(
            envelope.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except ValueError as error:
        raise EnvelopeError(RejectCause.NOT_FINITE, f"cannot encode envelope: {error}") from error
    if len(data) > max_bytes:
        raise EnvelopeError(
            RejectCause.OVERSIZE,
            f"{envelope.type} envelope is {len(data)} bytes, over the {max_bytes}-byte limit",
        )
    return data


def decode_envelope(
    raw: bytes,
    topic_node: str,
    topic_type: str,
    received_at: float,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Envelope:
    """Decode and validate one message against the topic it came on; raise EnvelopeError."""
    if not raw:
        raise EnvelopeError(RejectCause.EMPTY, "empty payload (a cleared retained message)")
    if len(raw) > max_bytes:
        raise EnvelopeError(
            RejectCause.OVERSIZE, f"message is {len(raw)} bytes, over the {max_bytes}-byte limit"
        )
    data = _parse_json(raw)
    if not isinstance(data, dict):
        raise EnvelopeError(
            RejectCause.NOT_OBJECT, f"envelope must be a JSON object, got {type(data).__name__}"
        )
    if "v" not in data and "type" in data and "payload" in data:
        return _decode_legacy(data, topic_node, topic_type, received_at)
    for key in ENVELOPE_KEYS:
        if key not in data:
            raise EnvelopeError(RejectCause.MISSING_KEY, f"envelope has no {key!r} key")
    version = data["v"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EnvelopeError(
            RejectCause.BAD_VERSION, f"unsupported envelope version {version!r}; this is v1"
        )
    _check_type_and_node(data, topic_node, topic_type)
    ts, seq = data["ts"], data["seq"]
    if not _is_finite_number(ts) or ts < 0:
        raise EnvelopeError(RejectCause.BAD_FIELD, f"ts must be Unix seconds, got {ts!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise EnvelopeError(RejectCause.BAD_FIELD, f"seq must be a whole number >= 0, got {seq!r}")
    validate_payload(topic_type, data["payload"])
    return Envelope(
        type=topic_type, node=topic_node, ts=float(ts), seq=seq, payload=data["payload"]
    )


def _decode_legacy(
    data: dict[str, Any], topic_node: str, topic_type: str, received_at: float
) -> Envelope:
    """The original design's `{"type": ..., "payload": ...}`: node from the topic, no seq."""
    _check_type_and_node(data, topic_node, topic_type)
    validate_payload(topic_type, data["payload"])
    return Envelope(
        type=topic_type, node=topic_node, ts=received_at, seq=None, payload=data["payload"]
    )


def _check_type_and_node(data: dict[str, Any], topic_node: str, topic_type: str) -> None:
    if data["type"] != topic_type:
        raise EnvelopeError(
            RejectCause.TYPE_MISMATCH,
            f"envelope type {data['type']!r} does not match the topic's {topic_type!r}",
        )
    if "node" in data and data["node"] != topic_node:
        raise EnvelopeError(
            RejectCause.NODE_MISMATCH,
            f"envelope node {data['node']!r} does not match the topic's {topic_node!r} "
            "(spoofed or misconfigured sender)",
        )


def _parse_json(raw: bytes) -> Any:
    # Nesting deeper than MAX_DEPTH needs at least that many brackets; counting them in C
    # keeps the full depth walk off the hot path.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_exceeds(raw, MAX_DEPTH):
        raise EnvelopeError(RejectCause.TOO_DEEP, f"JSON nests deeper than {MAX_DEPTH} levels")
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # classified below by the stdlib, which names the cause
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EnvelopeError(RejectCause.NOT_UTF8, f"payload is not UTF-8: {error}") from error
    # orjson refuses numbers beyond a double and lone surrogates; the stdlib would turn them
    # into inf and unencodable strings that later break the API's JSON and the store.
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_finite_float,
            parse_int=_parse_finite_int,
        )
    except EnvelopeError:
        raise
    except (ValueError, RecursionError) as error:
        raise EnvelopeError(RejectCause.NOT_JSON, f"payload is not JSON: {error}") from error
    if _holds_surrogate(value):
        raise EnvelopeError(
            RejectCause.NOT_UTF8, "JSON string holds a lone surrogate escape (not valid UTF-8)"
        )
    return value


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _reject_constant(name: str) -> Any:
    raise EnvelopeError(RejectCause.NOT_FINITE, f"JSON holds {name}, which is not a number")


def _parse_finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise EnvelopeError(RejectCause.NOT_FINITE, f"JSON number {text[:40]} overflows a double")
    return value


def _parse_finite_int(text: str) -> int:
    value = int(text)
    if not -_MAX_INT < value < _MAX_INT:
        raise EnvelopeError(
            RejectCause.NOT_FINITE, f"JSON number {text[:40]}... overflows a double"
        )
    return value


def _holds_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_holds_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_surrogate(key) or _holds_surrogate(item) for key, item in value.items())
    return False


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False
