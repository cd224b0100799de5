"""Several masters in the API: which role this one has, and followers pointing writes away.

A follower serves every read from the leader's saved state (master_service.peers.mirror) but
takes no write: commands, tags, enrollment and alerts are the leader's, so a write to a
follower is answered 503 with the leader's address.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from master_service.peers.leadership import FOLLOWER

# Writes a follower still takes: its own logins, and placement (a question, sent as POST).
FOLLOWER_WRITES = frozenset({"/login", "/logout", "/api/placement"})
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class MastersBody(BaseModel):
    """`GET /api/masters`: this master's role among several, and where the leader is."""

    role: Literal["sole", "leader", "follower"] = Field(
        description="sole: the only master; leader or follower: one of several"
    )
    leader: str | None = Field(description="the leader's dashboard address, when known")


def masters_router(
    role: str, leader_api: Callable[[], str | None], own_api: str, dependencies: Any
) -> APIRouter:
    """`GET /api/masters`."""
    router = APIRouter(tags=["health"])

    @router.get("/api/masters", dependencies=dependencies, response_model=MastersBody)
    def masters() -> MastersBody:
        """This master's role, and the leader's address (its own when it leads)."""
        leader = own_api if role != FOLLOWER else _quietly(leader_api)
        return MastersBody(role=role, leader=leader)  # type: ignore[arg-type]

    return router


def send_writes_to_leader(app: FastAPI, leader_api: Callable[[], str | None]) -> None:
    """On a follower: answer every write but a login with 503 and the leader's address."""

    @app.middleware("http")
    async def follower_takes_no_writes(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method in READS or request.url.path in FOLLOWER_WRITES:
            return await call_next(request)
        leader = await run_in_threadpool(_quietly, leader_api)
        where = f" at {leader}" if leader else " (none is known right now)"
        return JSONResponse(
            {"detail": f"this master is a follower: send changes to the leader{where}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )


def _quietly(leader_api: Callable[[], str | None]) -> str | None:
    try:
        return leader_api()
    except Exception:  # the database is away: the answer just has no address
        return None
