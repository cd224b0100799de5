"""The HTTP API's control side: send commands, read their replies, place work, forget nodes."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from master_service.control.commands import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, CommandRefusedError
from master_service.control.placement import RequirementError, Requirements, place
from master_service.control.units import SizeError, parse_size

if TYPE_CHECKING:
    from master_service.app import MasterService


class CommandRequest(BaseModel):
    """Body of `POST /api/nodes/{node}/commands`."""

    command: str = Field(description="ping, refresh, set_interval, run, reboot, shutdown")
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)


class PlacementRequest(BaseModel):
    """Body of `POST /api/placement`; sizes take units (`512MiB`, `2G`) or bytes."""

    min_ram: str | int | None = Field(None, description="memory available now, e.g. 2GiB")
    min_cores: int | None = Field(None, ge=1)
    max_cpu_percent: float | None = Field(None, ge=0, le=100)
    arch: str | None = None
    count: int = Field(1, ge=1)


def control_router(service: MasterService) -> APIRouter:
    """Routes for commands, placement and forget, bound to one running master."""
    router = APIRouter()
    token = service.settings.api_token

    def require_token(authorization: str | None = Header(None)) -> None:
        """Check `Authorization: Bearer <api_token>` whenever a token is configured."""
        if token is None:
            return  # settings allow no token only when the API listens on loopback
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "this endpoint needs Authorization: Bearer <api_token>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @router.post(
        "/api/nodes/{node}/commands", tags=["control"], dependencies=[Depends(require_token)]
    )
    def send_command(node: str, body: CommandRequest) -> JSONResponse:
        """Send a command and wait for the node's reply: 200 when it answered, 504 when not."""
        try:
            record = service.commands.send(node, body.command, body.args, body.timeout_s)
        except CommandRefusedError as error:
            raise HTTPException(error.status, str(error)) from error
        status = 504 if record.status in ("pending", "timeout") else 200
        return JSONResponse(record.to_dict(), status)

    @router.get(
        "/api/nodes/{node}/commands", tags=["control"], dependencies=[Depends(require_token)]
    )
    def list_commands(node: str, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
        """A node's recent commands with their replies, newest first."""
        return {
            "node": node,
            "commands": [r.to_dict() for r in service.commands.recent(node, limit)],
        }

    @router.post("/api/placement", tags=["control"])
    def placement(body: PlacementRequest) -> dict[str, Any]:
        """Nodes that fit the requirements, best first, and why the others do not."""
        try:
            min_ram = None if body.min_ram is None else parse_size(body.min_ram)
            requirements = Requirements(
                min_ram_bytes=min_ram,
                min_cores=body.min_cores,
                max_cpu_percent=body.max_cpu_percent,
                arch=body.arch,
                count=body.count,
            )
        except (SizeError, RequirementError) as error:
            raise HTTPException(422, str(error)) from error
        return place(service.state.views(), requirements).to_dict()

    @router.delete("/api/nodes/{node}", tags=["control"], dependencies=[Depends(require_token)])
    def forget_node(node: str) -> dict[str, Any]:
        """Forget a node: its state, history, commands and Home Assistant entities."""
        if not service.forget(node):
            raise HTTPException(404, f"no node {node!r} is known")
        return {"node": node, "forgotten": True}

    return router
