"""Human sizes: `512MiB`, `2GiB` (powers of 1024) and `2G`, `500MB` (powers of 1000) to bytes."""

from __future__ import annotations

import math
import re
from typing import Final

# SI letters mean powers of 1000 and IEC "i" forms powers of 1024, as in Kubernetes
# quantities: `2G` is 2,000,000,000 bytes, `2Gi` and `2GiB` are 2,147,483,648.
_SCALES: Final = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_IEC: Final = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*$")
GIB: Final = 1024**3
MIB: Final = 1024**2


class SizeError(ValueError):
    """A size that is not a number of bytes with an optional unit."""


def parse_size(text: str | int) -> int:
    """Bytes from `1073741824`, `512MiB`, `2Gi`, `2GiB` (1024-based) or `2G`, `2GB` (1000-based)."""
    if isinstance(text, bool):
        raise SizeError(f"{text!r} is not a size")
    if isinstance(text, int):
        if text < 0:
            raise SizeError(f"size must not be negative, got {text}")
        return text
    match = _SIZE.match(text)
    if match is None:
        raise SizeError(
            f"{text!r} is not a size: use bytes or a unit such as 512MiB, 2GiB (1024-based) "
            "or 2G, 500MB (1000-based)"
        )
    number, letter, iec, _ = match.groups()
    letter = letter.upper()
    if iec and not letter:
        raise SizeError(f"{text!r}: 'i' needs a unit letter before it, as in 512MiB")
    scale = _IEC[letter] if iec else _SCALES[letter]
    value = float(number) * scale
    if not math.isfinite(value):
        raise SizeError(f"{text!r} is too large")
    return round(value)


def format_size(size: float) -> str:
    """A short 1024-based rendering for explanations: `1.5 GiB`, `512 MiB`, `900 B`."""
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    if size >= MIB:
        return f"{size / MIB:.0f} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size:.0f} B"
