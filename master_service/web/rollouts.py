"""Rolling reboots and tasks started from the dashboard: `POST /api/rollouts`, then poll.

The roll runs inside the master (control/rollouts.py) so that closing the page does not stop
it half-way; `cluster-master reboot --rolling` does the same from the command line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from master_service.control.fleet_cli import MAX_REPLY_TIMEOUT_S, REBOOT_REPLY_TIMEOUT_S
from master_service.control.rolling import RollPlan
from master_service.control.rollouts import LocalRollApi, RolloutRefusedError, Rollouts
from master_service.web.access import Access
from master_service.web.errors import error_responses
from master_service.web.ports import MasterPort
from master_service.web.selection import NodeSelection, one_selection_schema, whole

TASK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_ROLL_TIMEOUT_S = 3600.0


def _task_only_with_run_schema(schema: dict[str, Any]) -> None:
    """Say in the schema what `task_only_with_run` checks, beside the one-selection rule."""
    one_selection_schema(schema)
    selection = {"oneOf": schema.pop("oneOf")}
    task_given = {"anyOf": [{"required": ["task"]}, {"required": ["task_args"]}]}
    schema["allOf"] = [
        selection,
        {
            "if": {"properties": {"command": {"const": "run"}}, "required": ["command"]},
            "then": {"required": ["task"]},
            "else": {"not": task_given},
        },
    ]
    schema["properties"]["task"].pop("default", None)


class RolloutRequest(NodeSelection):
    """Body of `POST /api/rollouts`: reboot, or run a task, wave by wave over the nodes."""

    model_config = ConfigDict(json_schema_extra=_task_only_with_run_schema)

    command: Literal["reboot", "run"]
    task: str = Field(
        default=None,  # type: ignore[assignment]  # only with run; see `task_only_with_run`
        pattern=TASK_PATTERN,
        description="with `run`: the task's name, as the node advertises it",
    )
    task_args: dict[str, Any] = Field(
        default_factory=dict, description="with `run`: the task's arguments"
    )
    max_unavailable: Annotated[int, Field(ge=1, le=100), BeforeValidator(whole)] = Field(
        1, description="nodes rebooting at once"
    )
    timeout_s: float = Field(
        300.0,
        gt=0,
        le=MAX_ROLL_TIMEOUT_S,
        description="per node: from the command until it is back and sending metrics",
    )

    @model_validator(mode="after")
    def task_only_with_run(self) -> RolloutRequest:
        """`run` needs a task; `reboot` takes none."""
        if (self.command == "run") != (self.task is not None):
            raise ValueError("give a task with run, and none with reboot")
        if self.command == "reboot" and self.task_args:
            raise ValueError("reboot takes no task_args")
        return self

    def plan(self) -> RollPlan:
        """The roll's plan, with the same reply timeouts as the command line's."""
        cap = REBOOT_REPLY_TIMEOUT_S if self.command == "reboot" else MAX_REPLY_TIMEOUT_S
        reply_timeout = min(self.timeout_s, cap)
        if self.command == "reboot":
            return RollPlan("reboot", {}, self.max_unavailable, self.timeout_s, reply_timeout)
        args = {"task": self.task, "args": self.task_args}
        comment = f"rolling task {self.task}"
        return RollPlan("run", args, self.max_unavailable, self.timeout_s, reply_timeout, comment)


class RolloutBody(BaseModel):
    """A roll: what, over which nodes, how far it got, and its report lines."""

    id: int
    command: str
    args: dict[str, Any]
    nodes: list[str]
    max_unavailable: int
    started: float
    finished: float | None
    running: bool
    ok: bool | None = Field(description="null while running; true when every node went through")
    done: list[str] = Field(description="nodes back and sending metrics")
    failed: dict[str, str] = Field(description="the node that stopped the roll, and why")
    untouched: list[str] = Field(description="nodes left alone after the roll stopped")
    error: str | None = Field(description="a fault of the master's own, if the roll broke")
    lines: list[str] = Field(description="the roll's report, as `reboot --rolling` prints it")


class RolloutListBody(BaseModel):
    """`GET /api/rollouts`: the last rolls, newest first."""

    rollouts: list[RolloutBody]


def local_roll_api(port: MasterPort) -> LocalRollApi:
    """The master's own parts as a roll uses them (looked up at each call)."""
    return LocalRollApi(
        lambda node, command, args, timeout_s: port.commands.send(node, command, args, timeout_s),
        lambda node: port.state.view(node),
        lambda node, rule, for_s, comment: port.alerting.silence(node, rule, for_s, comment),
        lambda silence_id: port.alerting.unsilence(silence_id),
    )


def rollouts_router(port: MasterPort, access: Access) -> APIRouter:
    """Routes to start a roll and follow it; the rolls run in this master."""
    router = APIRouter(tags=["control"])
    rollouts = Rollouts(local_roll_api(port))

    @router.post(
        "/api/rollouts",
        status_code=202,
        dependencies=access.admin,
        response_model=RolloutBody,
        responses=error_responses(*access.admin_errors, 409, 422),
    )
    def start_rollout(body: RolloutRequest) -> JSONResponse:
        """Start a roll (202); 409 when another runs, a node is not online, or none matched."""
        nodes = body.chosen(port.state.views())
        if not nodes:
            raise HTTPException(409, "no node matched: nothing to roll")
        try:
            rollout = rollouts.start(nodes, body.plan())
        except RolloutRefusedError as error:
            raise HTTPException(409, str(error)) from error
        return JSONResponse(rollout.to_dict(), 202)

    @router.get("/api/rollouts", response_model=RolloutListBody)
    def list_rollouts() -> dict[str, Any]:
        """The last rolls, newest first (kept in memory: a restart forgets them)."""
        return {"rollouts": [r.to_dict() for r in rollouts.recent()]}

    @router.get(
        "/api/rollouts/{rollout_id}",
        response_model=RolloutBody,
        responses=error_responses(404, 422),
    )
    def get_rollout(rollout_id: int = Path(ge=1, le=2**62)) -> dict[str, Any]:
        """One roll, while it is kept."""
        rollout = rollouts.get(rollout_id)
        if rollout is None:
            raise HTTPException(404, f"no roll {rollout_id} is kept")
        return rollout.to_dict()

    return router
