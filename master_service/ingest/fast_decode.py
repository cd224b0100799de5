"""One-pass decode and validation of a v1 metrics envelope by exact types; None: the long way.

`decode_metrics` accepts only what `cluster_protocol.decode_envelope` accepts, and returns
the same values for it; anything it is not sure of (a legacy envelope, a float `v`, a bad
field, JSON orjson refuses) returns None, and the router hands that message to
`decode_envelope`, which names the cause of a rejection. orjson never returns a non-finite
float (it refuses `1e400` and `NaN`), so an exact `float` needs no finiteness check here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from cluster_protocol.envelope import MAX_DEPTH, MAX_MESSAGE_BYTES, SCHEMA_VERSION
from cluster_protocol.schemas import METRICS_FIELDS

# The Python types orjson returns for each JSON type name of the schemas (bool is its own
# type, so an exact-type check never takes True for a number).
_JSON_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _allowed(spec: str) -> frozenset[type] | None:
    """The exact types a spec such as "number|null" admits; None when it admits anything."""
    names = spec.split("|")
    if "any" in names:
        return None
    return frozenset(kind for name in names for kind in _JSON_TYPES[name])


METRICS_TYPES: Final[Mapping[str, frozenset[type]]] = {
    key: allowed for key, spec in METRICS_FIELDS.items() if (allowed := _allowed(spec)) is not None
}
"""Each documented metrics key with a type rule, and the exact Python types it may hold."""

SHAPES_MAX: Final = 4096
_SHAPES: dict[tuple[tuple[str, ...], tuple[type, ...]], bool] = {}
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def decode_metrics(raw: bytes, node: str) -> tuple[float, int, dict[str, Any]] | None:
    """`(ts, seq, payload)` of a valid v1 metrics envelope from `node`; None: not sure."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES:
        return None
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        return None  # maybe too deep: the long path measures it
    try:
        data = _loads(raw)
    except _JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    try:
        version, kind, sender = data["v"], data["type"], data["node"]
        ts, seq, payload = data["ts"], data["seq"], data["payload"]
    except KeyError:
        return None
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    if kind != "metrics" or sender != node:
        return None
    kind_ts = type(ts)
    if (kind_ts is not float and kind_ts is not int) or ts < 0:
        return None
    if type(seq) is not int or seq < 0 or type(payload) is not dict:
        return None
    # A node sends the same keys with the same types sample after sample: each such shape
    # is checked against the schema once, then recognised by one dict lookup.
    shape = (tuple(payload), tuple(map(type, payload.values())))
    valid = _SHAPES.get(shape)
    if valid is None:
        valid = _shape_is_valid(shape[0], shape[1])
        if len(_SHAPES) >= SHAPES_MAX:
            _SHAPES.clear()  # bounded, whatever a sender invents
        _SHAPES[shape] = valid
    return (float(ts), seq, payload) if valid else None


def _shape_is_valid(keys: tuple[str, ...], kinds: tuple[type, ...]) -> bool:
    """True when every documented key among `keys` has an allowed exact type."""
    rules = METRICS_TYPES.get
    for key, kind in zip(keys, kinds, strict=True):
        allowed = rules(key)
        if allowed is not None and kind not in allowed:
            return False
    return True
