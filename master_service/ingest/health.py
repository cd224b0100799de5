"""The master's health: is it storing what it receives? `/healthz` answers from this."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

# The ingest loop wakes at least every 0.1 s; a loop silent this long is stuck, not idle.
STALLED_AFTER_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of the ingest path; `ok` is False with `reasons` when it is not storing."""

    ok: bool
    reasons: list[str]
    mqtt_connected: bool
    queue_depth: int
    committed: int
    store_error: str | None
    ingest_running: bool

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as `/healthz` returns it, with `status` "ok" or "unhealthy"."""
        return {"status": "ok" if self.ok else "unhealthy", **asdict(self)}


def assess(
    *,
    ingest_running: bool,
    ingest_silent_s: float,
    store_error: str | None,
    mqtt_connected: bool,
    disconnected_s: float | None,
    keepalive_s: float,
    queue_depth: int,
    committed: int,
) -> Health:
    """Build a Health from raw readings; each problem becomes one human-readable reason."""
    reasons: list[str] = []
    if not ingest_running:
        reasons.append("ingest is not running")
    elif ingest_silent_s > STALLED_AFTER_S:
        reasons.append(f"ingest has not made progress for {ingest_silent_s:.0f} s")
    if store_error is not None:
        reasons.append(f"cannot write to the store: {store_error}")
    # A broker restart or a short network blip is normal: only a disconnection longer than
    # a keepalive (when the broker itself would give up on us) makes the master unhealthy.
    if disconnected_s is not None and disconnected_s > keepalive_s:
        reasons.append(f"disconnected from the broker for {disconnected_s:.0f} s")
    return Health(
        ok=not reasons,
        reasons=reasons,
        mqtt_connected=mqtt_connected,
        queue_depth=queue_depth,
        committed=committed,
        store_error=store_error,
        ingest_running=ingest_running,
    )
