"""What `/healthz` reports: each problem one reason, a short broker blip none."""

from __future__ import annotations

from typing import Any

import pytest

from master_service.ingest.health import STALLED_AFTER_S, assess


def readings(**changes: Any) -> dict[str, Any]:
    healthy: dict[str, Any] = {
        "ingest_running": True,
        "ingest_silent_s": 0.05,
        "store_error": None,
        "mqtt_connected": True,
        "disconnected_s": None,
        "keepalive_s": 30.0,
        "queue_depth": 3,
        "committed": 42,
    }
    return {**healthy, **changes}


def test_a_working_master_is_ok_and_says_so() -> None:
    health = assess(**readings())
    assert (health.ok, health.reasons) == (True, [])
    assert health.to_dict() == {
        "status": "ok",
        "ok": True,
        "reasons": [],
        "mqtt_connected": True,
        "queue_depth": 3,
        "committed": 42,
        "store_error": None,
        "ingest_running": True,
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ingest_running": False}, "ingest is not running"),
        ({"ingest_silent_s": STALLED_AFTER_S + 1}, "ingest has not made progress for 31 s"),
        ({"store_error": "database or disk is full"}, "cannot write to the store: database or"),
        (
            {"mqtt_connected": False, "disconnected_s": 31.0},
            "disconnected from the broker for 31 s",
        ),
    ],
)
def test_each_problem_is_unhealthy_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    health = assess(**readings(**changes))
    assert health.to_dict()["status"] == "unhealthy"
    (only,) = health.reasons
    assert only.startswith(reason)


def test_a_broker_blip_shorter_than_a_keepalive_is_healthy() -> None:
    health = assess(**readings(mqtt_connected=False, disconnected_s=29.0))
    assert health.ok
    assert health.mqtt_connected is False


def test_several_problems_are_all_named() -> None:
    health = assess(**readings(store_error="disk I/O error", disconnected_s=120.0))
    assert len(health.reasons) == 2
