"""Durations in the alert settings: a number of seconds, or text like "90s", "5m", "2h"."""

from __future__ import annotations

import math
import re
from typing import Final

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(raw: object) -> float:
    """Seconds from `raw` (int, float or "<number><s|m|h|d>"); ValueError saying what is wrong."""
    if isinstance(raw, bool):
        raise ValueError(f"must be seconds or text like '90s', '5m', '2h', got {raw!r}")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str) and (match := _TEXT.match(raw)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"must be seconds or text like '90s', '5m', '2h', got {raw!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be 0 or more seconds, got {raw!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 5m, 2h 30m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m" + (f" {secs}s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" + (f" {minutes}m" if minutes else "")
