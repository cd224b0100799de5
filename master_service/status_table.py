"""Render the node list as a plain-text table for `cluster-master status`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

COLUMNS: Final = ("NODE", "STATE", "LAST SEEN", "CPU %", "MEM %", "TEMP °C", "UPTIME", "TAGS")


def ago(ts: float | None, now: float) -> str:
    """'12s ago', '3m ago', 'never'."""
    if ts is None:
        return "never"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def duration(seconds: float | None) -> str:
    """'3d 4h', '5h 12m', '42s'; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _number(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


# States in which the last metrics describe the past, not the node now: shown as absent.
NOT_CURRENT_STATES: Final = frozenset({"offline", "unknown"})


def node_row(view: Mapping[str, Any], now: float) -> tuple[str, ...]:
    """One table row for one node view from the API.

    An offline node's last CPU, memory, temperature and uptime are left out ("-"): shown next to
    the others they would read as current. LAST SEEN says how old they are.
    """
    metrics = view.get("metrics") or {}
    if view.get("state") in NOT_CURRENT_STATES:
        metrics = {}
    return (
        str(view["node"]),
        str(view["state"]),
        ago(view.get("last_seen"), now),
        _number(metrics.get("cpu_percent")),
        _number(metrics.get("memory_percent")),
        _number(metrics.get("temperature_celsius")),
        duration(metrics.get("uptime_s")),
        ",".join(str(tag) for tag in view.get("tags") or ()),
    )


def render_table(views: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    """The whole table, columns padded to fit."""
    moment = time.time() if now is None else now
    rows = [COLUMNS, *(node_row(view, moment) for view in views)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    if not views:
        lines.append("(no nodes yet)")
    return "\n".join(line.rstrip() for line in lines)
