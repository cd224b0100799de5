"""`GET /api/catalog/metrics`: the metric table as JSON, so the dashboard lists no metric itself."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cluster_protocol import METRICS, Metric


class DashboardBody(BaseModel):
    """How the dashboard shows a metric."""

    label: str
    format: str = Field(description="formatter: percent, rate, celsius, load, duration, ...")
    card: bool = Field(description="shown on the node's card on the overview")
    chart: str | None = Field(description="title of the node-page chart that draws it")
    series: str | None = Field(description="its name in that chart's legend")
    y_min: float | None
    y_max: float | None


class MetricBody(BaseModel):
    """One metric of a node's `metrics` payload (or derived from it, `in_payload` false)."""

    key: str
    json_type: str = Field(description='JSON types it may hold, e.g. "number|null"')
    unit: str | None
    description: str
    history: bool = Field(description="kept in history: a valid `metric` for /history")
    in_payload: bool
    prometheus: str | None = Field(description="its family at /metrics, if exported")
    dashboard: DashboardBody | None


class CatalogBody(BaseModel):
    """`GET /api/catalog/metrics`: every metric, in display order."""

    metrics: list[MetricBody]


def metric_entry(m: Metric) -> dict[str, Any]:
    """One metric as the catalog shows it."""
    board = m.dashboard
    return {
        "key": m.key,
        "json_type": m.json_type,
        "unit": m.unit,
        "description": m.description,
        "history": m.history,
        "in_payload": m.in_payload,
        "prometheus": m.prometheus.name if m.prometheus else None,
        "dashboard": None
        if board is None
        else {
            "label": board.label,
            "format": board.format,
            "card": board.card,
            "chart": board.chart,
            "series": board.series or board.label,
            "y_min": board.y_min,
            "y_max": board.y_max,
        },
    }


# The table is fixed for the life of the process: build the answer once.
CATALOG: Final = {"metrics": [metric_entry(m) for m in METRICS]}


def catalog_router() -> APIRouter:
    """The `/api/catalog/metrics` route."""
    router = APIRouter()

    @router.get("/api/catalog/metrics", tags=["catalog"], response_model=CatalogBody)
    def metrics_catalog() -> dict[str, Any]:
        """Every metric a node reports: key, unit, meaning, history, how the dashboard shows it."""
        return CATALOG

    return router
