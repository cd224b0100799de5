"""The HTTP API's control side: send commands (to one node or many), read replies, place, forget."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
)

from cluster_protocol.commands import COMMAND_NAME_PATTERN, CommandName
from cluster_protocol.node_id import NODE_ID_PATTERN
from master_service.control.commands import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    CommandRefusedError,
)
from master_service.control.fanout import fan_out
from master_service.control.placement import (
    Candidate,
    Rejection,
    RequirementError,
    Requirements,
    place,
)
from master_service.control.units import parse_size
from master_service.web.access import Access
from master_service.web.errors import error_responses
from master_service.web.ports import MasterPort
from master_service.web.rollouts import rollouts_router
from master_service.web.selection import TAG_PATTERN, NodeSelection, Positive, whole

# What `parse_size` reads, as a JSON Schema pattern: a number of bytes and an optional unit,
# 1000-based (`2G`, `500MB`) or 1024-based with an `i` (`512MiB`, `2Gi`). ASCII classes
# only: `\d` and `\s` would also match digits and spaces of other scripts.
SIZE_PATTERN: Final = r"^ *[0-9]+(\.[0-9]+)? *([kKmMgGtT]i?)?[bB]? *$"
SIZE_MAX_LENGTH: Final = 32  # longer digit strings overflow a float
ARCH_PATTERN: Final = r"^[A-Za-z0-9_.+-]+$"
# As cluster_protocol's tags: lower-case letters, digits, `_`, `.`, `-`.
NodeId = Annotated[
    str, Path(pattern=NODE_ID_PATTERN.pattern, description="node id, as the node publishes it")
]


_SIZE_TEXT: Final = re.compile(SIZE_PATTERN)


def _size(value: Any) -> int | None:
    """Bytes from a size (`512MiB`, `2G`, or a whole number of bytes); None stays None."""
    value = whole(value)
    if value is None:
        return None
    if type(value) is int:
        return parse_size(value)  # refuses a negative size
    if isinstance(value, str) and len(value) <= SIZE_MAX_LENGTH and _SIZE_TEXT.fullmatch(value):
        return parse_size(value)
    raise ValueError(
        f"{value!r} is not a size: use bytes or a unit such as 512MiB, 2GiB (1024-based) "
        "or 2G, 500MB (1000-based)"
    )


# One validator, so a bad size gets one message with examples rather than one per type.
Size = Annotated[
    int | None,
    PlainValidator(_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": SIZE_PATTERN, "maxLength": SIZE_MAX_LENGTH},
                {"type": "integer", "minimum": 0},
                {"type": "null"},
            ]
        }
    ),
]


class CommandRequest(BaseModel):
    """Body of `POST /api/nodes/{node}/commands`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    command: str = Field(
        pattern=COMMAND_NAME_PATTERN.pattern,
        description=", ".join(CommandName),
    )
    args: dict[str, Any] = Field(default_factory=dict, description="the command's arguments")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)


class FanOutRequest(NodeSelection):
    """Body of `POST /api/commands`: one command, and the nodes as names, a tag, or all."""

    command: str = Field(pattern=COMMAND_NAME_PATTERN.pattern, description=", ".join(CommandName))
    args: dict[str, Any] = Field(default_factory=dict, description="the command's arguments")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)


class FanOutRowBody(BaseModel):
    """One node's outcome of a command sent to many."""

    node: str
    ok: bool = Field(description="the node answered ok")
    status: str = Field(description="ok, error (the node's error reply), timeout or refused")
    result: Any = Field(None, description="what the node returned")
    error: str | None = Field(description="the node's error, or why nothing was sent or heard")
    id: str | None = Field(description="the command's id; null when it was not sent")
    duration_s: float = Field(description="from sending to the answer, seconds")


class FanOutBody(BaseModel):
    """`POST /api/commands`: a row per chosen node, in order (names as given, else by id)."""

    command: str
    ok: bool = Field(description="every node answered ok (false when no node was chosen)")
    results: list[FanOutRowBody]


class PlacementRequest(BaseModel):
    """Body of `POST /api/placement`; sizes take units (`512MiB`, `2G`) or bytes."""

    model_config = ConfigDict(strict=True, extra="forbid")

    min_ram: Size = Field(
        None, description="memory available now: bytes, or 512MiB, 2GiB, 2G, 500MB"
    )
    min_cores: Positive | None = None
    max_cpu_percent: float | None = Field(None, ge=0, le=100, description="CPU in use now, %")
    arch: str | None = Field(
        None, pattern=ARCH_PATTERN, max_length=32, description="aarch64, arm64, x86_64, ..."
    )
    count: Positive = 1
    tag: str | None = Field(
        None, pattern=TAG_PATTERN, description="consider only the nodes that carry this tag"
    )


class CommandRecordBody(BaseModel):
    """A command as the master keeps it, with the node's reply once it came."""

    id: str
    node: str
    command: str
    args: dict[str, Any]
    sent_at: float
    expires: float
    status: str = Field(description="pending, ok, error or timeout")
    ok: bool | None = Field(description="the reply said ok; null while there is none")
    result: Any = Field(None, description="what the node returned")
    error: str | None = None
    replied_at: float | None = None


class CommandListBody(BaseModel):
    """`GET /api/nodes/{node}/commands`: a node's recent commands, newest first."""

    node: str
    commands: list[CommandRecordBody]


class PlacementBody(BaseModel):
    """`POST /api/placement`: chosen nodes best first, others that fit, and why the rest do not."""

    requirements: Requirements
    satisfied: bool = Field(description="as many nodes fit as `count` asked for")
    chosen: list[Candidate]
    also_fit: list[Candidate]
    rejected: list[Rejection]


class ForgottenBody(BaseModel):
    """`DELETE /api/nodes/{node}`: the node is gone."""

    node: str
    forgotten: bool


def control_router(port: MasterPort, access: Access) -> APIRouter:
    """Routes for commands, placement and forget, bound to one running master."""
    router = APIRouter(tags=["control"])
    guarded = access.admin
    auth_errors = access.admin_errors

    @router.post(
        "/api/nodes/{node}/commands",
        dependencies=guarded,
        response_model=CommandRecordBody,
        responses={
            504: {"model": CommandRecordBody, "description": "No reply in time (`timeout`)"},
            **error_responses(400, *auth_errors, 404, 409, 413, 422, 503),
        },
    )
    def send_command(node: NodeId, body: CommandRequest) -> JSONResponse:
        """Send a command and wait for the node's reply: 200 when it answered, 504 when not."""
        try:
            record = port.commands.send(node, body.command, body.args, body.timeout_s)
        except CommandRefusedError as error:
            raise HTTPException(error.status, str(error)) from error
        status = 504 if record.status in ("pending", "timeout") else 200
        return JSONResponse(record.to_dict(), status)

    @router.post(
        "/api/commands",
        dependencies=guarded,
        response_model=FanOutBody,
        responses=error_responses(400, *auth_errors, 422),
    )
    def send_many(body: FanOutRequest) -> dict[str, Any]:
        """Send one command to many nodes at once and wait for every answer (or its timeout).

        Each node is sent the command as `POST /api/nodes/{node}/commands` would: an unknown or
        offline node gets a `refused` row at once, a silent one a `timeout` row.
        """
        chosen = body.chosen(port.state.views())
        rows = fan_out(port.commands.send, chosen, body.command, body.args, body.timeout_s)
        return {
            "command": body.command,
            "ok": bool(rows) and all(row.ok for row in rows),
            "results": [row.to_dict() for row in rows],
        }

    @router.get(
        "/api/nodes/{node}/commands",
        dependencies=guarded,
        response_model=CommandListBody,
        responses=error_responses(*auth_errors, 404, 422),
    )
    def list_commands(node: NodeId, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
        """A node's recent commands with their replies, newest first."""
        if port.state.view(node) is None:  # a forgotten node's commands went with it
            raise HTTPException(404, f"no node {node!r} is known")
        return {
            "node": node,
            "commands": [r.to_dict() for r in port.commands.recent(node, limit)],
        }

    @router.post(
        "/api/placement",
        response_model=None,  # documented below; the dataclasses' own JSON is sent as is
        responses={
            200: {"model": PlacementBody, "description": "The placement"},
            **error_responses(400, 422),
        },
    )
    def placement(body: PlacementRequest) -> dict[str, Any]:
        """Nodes that fit the requirements, best first, and why the others do not."""
        try:
            requirements = Requirements(
                min_ram_bytes=body.min_ram,
                min_cores=body.min_cores,
                max_cpu_percent=body.max_cpu_percent,
                arch=body.arch,
                count=body.count,
                tag=body.tag,
            )
        except RequirementError as error:
            raise HTTPException(422, str(error)) from error  # the schema refuses these first
        return place(port.state.views(), requirements).to_dict()

    @router.delete(
        "/api/nodes/{node}",
        dependencies=guarded,
        response_model=ForgottenBody,
        responses=error_responses(*auth_errors, 404, 422),
    )
    def forget_node(node: NodeId) -> dict[str, Any]:
        """Forget a node: its state, history, commands and Home Assistant entities."""
        if not port.forget(node):
            raise HTTPException(404, f"no node {node!r} is known")
        return {"node": node, "forgotten": True}

    router.include_router(rollouts_router(port, access))
    return router
