"""The metric table and what is derived from it: schema, history, catalog, dashboard formats."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from cluster_protocol import (
    HISTORY_METRICS,
    METRICS,
    METRICS_FIELDS,
    EnvelopeError,
    metric,
    validate_payload,
)
from cluster_protocol.schemas import _CHECKS
from master_service.web.catalog import catalog_router

APP_JS = Path(__file__).parents[2] / "master_service" / "web" / "static" / "app.js"


def test_keys_are_unique_and_looked_up() -> None:
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    assert all(metric(key).key == key for key in keys)
    with pytest.raises(KeyError):
        metric("no_such_metric")


def test_the_payload_schema_is_the_table() -> None:
    assert {m.key: m.json_type for m in METRICS if m.in_payload} == METRICS_FIELDS
    for m in METRICS:
        assert set(m.json_type.split("|")) <= set(_CHECKS), m.key
    with pytest.raises(EnvelopeError, match=r"metrics\.temperature_celsius must be number"):
        validate_payload("metrics", {"temperature_celsius": "hot"})


def test_history_metrics_are_numbers_in_declaration_order() -> None:
    assert [m.key for m in METRICS if m.history] == list(HISTORY_METRICS)
    for key in HISTORY_METRICS:
        assert set(metric(key).json_type.split("|")) <= {"number", "integer", "null"}, key
        assert re.fullmatch(r"[a-z][a-z0-9_]*", key), f"{key} is not a safe column name"


def test_prometheus_exports_have_unique_conventional_names_and_exact_scales() -> None:
    exports = [m.prometheus for m in METRICS if m.prometheus is not None]
    names = [e.name for e in exports]
    assert len(names) == len(set(names))
    for export in exports:
        assert re.fullmatch(r"picluster_node_[a-z0-9_]+", export.name), export.name
        assert export.help
        if export.scale < 1:  # applied as a division by an integer (exact ratios)
            assert round(1 / export.scale) * export.scale == pytest.approx(1.0), export.name


def test_every_dashboard_format_has_a_formatter_and_charts_hold_history() -> None:
    formats = set(re.findall(r"^\s+(\w+): \{ text:", APP_JS.read_text(), re.MULTILINE))
    assert {"percent", "rate", "celsius"} <= formats
    for m in METRICS:
        if m.dashboard is None:
            continue
        assert m.dashboard.format in formats, f"{m.key}: no formatter {m.dashboard.format!r}"
        assert m.dashboard.chart is None or m.history, f"{m.key}: a chart needs history"


def test_the_catalog_endpoint_lists_every_metric_with_its_dashboard_entry() -> None:
    app = FastAPI()
    app.include_router(catalog_router())

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return await client.get("/api/catalog/metrics")

    response = asyncio.run(get())

    assert response.status_code == 200
    listed = response.json()["metrics"]
    assert [m["key"] for m in listed] == [m.key for m in METRICS]
    assert [m["key"] for m in listed if m["history"]] == list(HISTORY_METRICS)
    cpu = listed[0]
    assert cpu["unit"] == "%"
    assert cpu["prometheus"] == "picluster_node_cpu_usage_ratio"
    assert cpu["dashboard"]["label"] == "CPU"
    assert cpu["dashboard"]["chart"] == "CPU"
    network = [m["dashboard"]["series"] for m in listed if m["key"].startswith("net_")]
    assert network == ["Received", "Sent"]
