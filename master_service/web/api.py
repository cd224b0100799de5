"""The HTTP side: JSON API, dashboard and health, all read from the same in-memory state."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from master_service.auth.throttle import LoginThrottle
from master_service.peers.leadership import FOLLOWER
from master_service.storage.history import HistoryQuery, HistoryQueryError, HistoryReader
from master_service.storage.store import HISTORY_METRICS
from master_service.web.access import Access
from master_service.web.alerts import alerts_router
from master_service.web.catalog import catalog_router
from master_service.web.control import NodeId, control_router
from master_service.web.enroll import enroll_router
from master_service.web.errors import error_responses, install_error_handlers
from master_service.web.login import login_router
from master_service.web.masters import masters_router, send_writes_to_leader
from master_service.web.ports import MasterPort
from master_service.web.prometheus import chunked, metrics_router
from master_service.web.tags import tags_router

logger = logging.getLogger(__name__)

STATIC_DIR = resources.files("master_service.web") / "static"


class HealthBody(BaseModel):
    """`GET /healthz`: 200 when the master is storing what it receives, else 503 and why."""

    status: Literal["ok", "unhealthy"]
    ok: bool
    reasons: list[str] = Field(description="one sentence per problem; empty when ok")
    mqtt_connected: bool
    queue_depth: int = Field(description="messages waiting for the ingest thread")
    committed: int = Field(description="messages stored since start")
    store_error: str | None = Field(description="the last store write error, if it persists")
    ingest_running: bool


class HistoryBody(BaseModel):
    """`GET /api/nodes/{node}/history`: `[ts, value]` points in time order."""

    node: str
    metric: str
    since: float
    until: float
    step_s: float | None = Field(description="bucket width; null for raw samples")
    source: Literal["raw", "rollup"]
    points: list[Annotated[list[float | None], Field(min_length=2, max_length=2)]] = Field(
        description="`[ts, value]`: ts is never null; value is null when the node sent none"
    )


def create_app(port: MasterPort) -> FastAPI:
    """Build the FastAPI application for one running master."""
    settings = port.settings
    history = HistoryReader(settings.database, settings.history_raw_days, port.clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        history.close()  # the server threads' read connections

    app = FastAPI(
        lifespan=lifespan,
        title="picluster master",
        version="1",
        description="State, history and control of a picluster (nodes publishing over MQTT).",
    )
    install_error_handlers(app)
    access = Access(port.accounts, settings.api_token, settings.login_required)
    reader = access.reader
    read_errors = access.reader_errors
    listing = port.state  # also serves its views already encoded as JSON
    app.include_router(metrics_router(port.metrics, settings.metrics_token))
    app.include_router(login_router(access, LoginThrottle()))
    app.include_router(catalog_router(), dependencies=reader)
    app.include_router(masters_router(port.role, port.leader_api, port.own_api, reader))
    if port.role == FOLLOWER:
        send_writes_to_leader(app, port.leader_api)

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=HealthBody,
        responses={503: {"model": HealthBody, "description": "Unhealthy: `reasons` says why"}},
    )
    def healthz() -> JSONResponse:
        """Health: 200 while ingest runs, the store takes writes and the broker is not long gone."""
        health = port.health()
        return JSONResponse(health.to_dict(), 200 if health.ok else 503)

    @app.get(
        "/api/nodes",
        tags=["nodes"],
        dependencies=reader,
        response_model=dict[str, Any],
        responses=error_responses(*read_errors, 422),
    )
    def list_nodes(
        tag: Annotated[
            list[str],
            Query(description="only nodes with this tag (own or master-side); repeat: all of them"),
        ] = [],  # noqa: B006 - FastAPI copies a default, it never mutates it
    ) -> StreamingResponse:
        """Every known node with its state, details, latest metrics, counters and tags."""
        # The state's listing, encoded once per committed flush; FastAPI's encoder walking
        # 10,000 nodes took seconds (bench/README.md, scale).
        nodes = listing.nodes_json(tag)
        generated_at = orjson.dumps(time.time())
        return StreamingResponse(
            chunked(b'{"nodes":', nodes, b',"generated_at":', generated_at, b"}"),
            media_type="application/json",
        )

    @app.get(
        "/api/nodes/{node}",
        tags=["nodes"],
        dependencies=reader,
        response_model=dict[str, Any],
        responses=error_responses(*read_errors, 404, 422),
    )
    def get_node(node: NodeId) -> Response:
        """One node."""
        view = listing.node_json(node)
        if view is None:
            raise HTTPException(404, f"no node {node!r} is known")
        return Response(view, media_type="application/json")

    @app.get(
        "/api/nodes/{node}/history",
        tags=["nodes"],
        dependencies=reader,
        response_class=Response,
        responses={
            200: {"model": HistoryBody, "description": "The points"},
            **error_responses(*read_errors, 404, 422),
        },
    )
    def get_history(
        node: NodeId,
        metric: str = Query(
            description=f"one of: {', '.join(HISTORY_METRICS)}",
            json_schema_extra={"enum": list(HISTORY_METRICS)},
        ),
        since: float | None = Query(
            None, description="Unix seconds; default until - 1 hour", allow_inf_nan=False
        ),
        until: float | None = Query(
            None, description="Unix seconds; default now", allow_inf_nan=False
        ),
        step: float | None = Query(
            None,
            gt=0,
            allow_inf_nan=False,
            description="bucket in seconds; default: raw or ~2000 points",
        ),
    ) -> Response:
        """Points of one metric for one node: raw samples, or averages per `step_s` bucket.

        Fine steps within history_raw_days come from raw samples; longer ranges, coarser
        steps (60 s and up) and older times from 1-minute averages (`source` says which).
        A range must have `since` before `until` and at most 10,000 points (422 otherwise).
        """
        if port.state.view(node) is None:
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

    @app.get(
        "/api/cluster",
        tags=["cluster"],
        dependencies=reader,
        responses=error_responses(*read_errors),
    )
    def get_cluster() -> dict[str, Any]:
        """Cluster totals and the master's own counters."""
        return {
            **port.state.summary(),
            "master": port.counters.snapshot(),
            "generated_at": time.time(),
        }

    app.include_router(control_router(port, access), dependencies=reader)
    app.include_router(tags_router(port, access), dependencies=reader)
    app.include_router(enroll_router(port, access))  # a new node's installer has no login
    app.include_router(alerts_router(port, access), dependencies=reader)

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

        @app.get("/", include_in_schema=False)
        def dashboard(request: Request) -> Response:
            if access.login_required and access.identify(request) is None:
                return RedirectResponse("/login", 303)
            return FileResponse(str(STATIC_DIR / "index.html"))

    return app
