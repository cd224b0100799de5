"""The HTTP side: JSON API, dashboard and health, all read from the same in-memory state."""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from master_service.storage.history import HistoryQuery, HistoryQueryError, HistoryReader
from master_service.storage.store import HISTORY_METRICS
from master_service.web.catalog import catalog_router
from master_service.web.control import control_router
from master_service.web.prometheus import metrics_router

if TYPE_CHECKING:
    from master_service.app import MasterService

logger = logging.getLogger(__name__)

STATIC_DIR = resources.files("master_service.web") / "static"


def create_app(service: MasterService) -> FastAPI:
    """Build the FastAPI application for one running master."""
    app = FastAPI(
        title="picluster master",
        version="1",
        description="State, history and control of a picluster (nodes publishing over MQTT).",
    )

    @app.exception_handler(Exception)
    async def json_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("API error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, 500)

    history = HistoryReader(service.settings.db, service.settings.history_raw_days, service.clock)
    app.include_router(metrics_router(service.metrics))
    app.include_router(catalog_router())

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: is the master connected to the broker and keeping up."""
        store_error = service.ingestor.store_error
        return {
            "status": "ok" if store_error is None else "degraded",
            "mqtt_connected": service.listener.connected.is_set(),
            "queue_depth": service.ingestor.queue.qsize(),
            "committed": service.ingestor.committed,
            "store_error": store_error,
        }

    @app.get("/api/nodes", tags=["nodes"])
    def list_nodes() -> dict[str, Any]:
        """Every known node with its state, details, latest metrics and counters."""
        return {"nodes": service.state.views(), "generated_at": time.time()}

    @app.get("/api/nodes/{node}", tags=["nodes"])
    def get_node(node: str) -> dict[str, Any]:
        """One node."""
        view = service.state.view(node)
        if view is None:
            raise HTTPException(404, f"no node {node!r} is known")
        return view

    @app.get("/api/nodes/{node}/history", tags=["nodes"])
    def get_history(
        node: str,
        metric: str = Query(description=f"one of: {', '.join(HISTORY_METRICS)}"),
        since: float | None = Query(None, description="Unix seconds; default until - 1 hour"),
        until: float | None = Query(None, description="Unix seconds; default now"),
        step: float | None = Query(
            None, description="bucket in seconds; default: raw or ~2000 points"
        ),
    ) -> Response:
        """Points of one metric for one node: raw samples, or averages per `step_s` bucket.

        Fine steps within history_raw_days come from raw samples; longer ranges, coarser
        steps (60 s and up) and older times from 1-minute averages (`source` says which).
        """
        if service.state.get(node) is None:
            raise HTTPException(404, f"no node {node!r} is known")
        end = until if until is not None else time.time()
        start = since if since is not None else end - 3600
        try:
            query = HistoryQuery(node, metric, start, end, step)
        except HistoryQueryError as error:
            raise HTTPException(422, str(error)) from error
        result = history.read(query)
        body = {
            "node": node,
            "metric": metric,
            "since": start,
            "until": end,
            "step_s": result.step_s,
            "source": result.source.value,
            "points": result.points,
        }
        # Thousands of points: orjson at once, not FastAPI's encoder walking every point.
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/api/cluster", tags=["cluster"])
    def get_cluster() -> dict[str, Any]:
        """Cluster totals and the master's own counters."""
        summary = service.state.summary()
        summary["master"] = service.counters.snapshot()
        summary["generated_at"] = time.time()
        return summary

    app.include_router(control_router(service))

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

        @app.get("/", include_in_schema=False)
        def dashboard() -> FileResponse:
            return FileResponse(str(STATIC_DIR / "index.html"))

    return app
