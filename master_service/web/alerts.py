"""The HTTP API of alerts: what fires, the history, silences and a test notification."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from master_service.alerts.durations import parse_duration
from master_service.alerts.service import SilenceError, StoreBusyError
from master_service.web.access import Access
from master_service.web.errors import error_responses
from master_service.web.ports import MasterPort

# A node id, or a glob of them (`rack1-*`): the characters of node ids plus * ? [ ].
NODE_GLOB_PATTERN: Final = r"^[a-z0-9_*?\[\]-]{1,63}$"
# Whatever the pattern lets through is within MAX_SILENCE_S (9999.999 days at most).
NODE_OR_CLUSTER_PATTERN: Final = r"^[a-z0-9_][a-z0-9_-]{0,62}$"
MAX_SILENCE_S: Final = 10_000 * 86400.0
DURATION_PATTERN: Final = r"^ *[1-9][0-9]{0,3}(\.[0-9]{1,3})? *[smhd] *$"


class AlertBody(BaseModel):
    """One alert firing now."""

    node: str = Field(description="node id; `_cluster` for the cluster-wide alert")
    rule: str
    severity: Literal["warning", "critical"]
    state: Literal["firing"]
    since: float = Field(description="when the condition began (Unix seconds)")
    value: float | None = Field(description="the latest value the rule read, if numeric")
    threshold: float | None
    detail: str
    silenced: bool = Field(description="a silence mutes its notifications")
    flapping: bool = Field(description="it fired too often lately; muted until it settles")


class AlertsBody(BaseModel):
    """`GET /api/alerts`."""

    alerts: list[AlertBody]
    delivery: dict[str, Any] = Field(
        description="notifications sent, failed, expired and pending, per channel and in all"
    )


class EventBody(BaseModel):
    """One alert event: a transition, a one-shot, or a flapping notice."""

    id: int
    at: float
    node: str
    rule: str
    severity: Literal["warning", "critical"]
    event: Literal["firing", "resolved", "fired", "flapping", "settled"]
    value: float | None
    threshold: float | None
    since: float | None
    message: str
    notified: bool = Field(description="a notification went to the channels for it")


class HistoryBody(BaseModel):
    """`GET /api/alerts/history`: newest first."""

    events: list[EventBody]


class SilenceBody(BaseModel):
    """A silence: notifications of matching alerts are muted until `ends`."""

    id: int
    node: str = Field(description="node id or glob")
    rule: str | None = Field(description="null: every rule")
    starts: float
    ends: float
    comment: str


class SilencesBody(BaseModel):
    """`GET /api/alerts/silences`."""

    silences: list[SilenceBody]


class SilenceRequest(BaseModel):
    """`POST /api/alerts/silences` (`rule` is one of the configured rules: see `silence_model`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    node: str = Field(pattern=NODE_GLOB_PATTERN, description="node id or glob, e.g. rack1-*")
    rule: str | None = Field(None, description="null: every rule")
    duration: (
        Annotated[str, Field(pattern=DURATION_PATTERN)]
        | Annotated[float, Field(gt=0, le=MAX_SILENCE_S)]
    ) = Field(alias="for", description='seconds, or text like "90s", "5m", "2h"')
    comment: str = Field("", max_length=500)


class TestRequest(BaseModel):
    """`POST /api/alerts/test`."""

    __test__ = False  # not a pytest test class, despite the name
    model_config = ConfigDict(extra="forbid")

    channel: int | None = Field(None, ge=0, description="channel index; null: every channel")


class TestResultBody(BaseModel):
    """Whether one channel accepted the test notification."""

    __test__ = False

    channel: int
    label: str = Field(description="the channel's scheme and host (no secrets)")
    accepted: bool
    error: str | None


class TestBody(BaseModel):
    """`POST /api/alerts/test`."""

    __test__ = False

    results: list[TestResultBody]


def silence_model(rules: Sequence[str]) -> type[SilenceRequest]:
    """SilenceRequest with `rule` limited to these names, so the schema lists them."""
    names = enum.Enum("RuleName", {name: name for name in rules}, type=str)  # type: ignore[misc]
    model: type[SilenceRequest] = create_model(
        "SilenceRequest",
        __base__=SilenceRequest,
        rule=(names | None, Field(None, description="null: every rule")),
    )
    return model


def alerts_router(port: MasterPort, access: Access) -> APIRouter:
    """The /api/alerts routes; writes need the API token like every other write."""
    router = APIRouter(tags=["alerts"])
    guarded = access.admin
    auth = access.admin_errors
    alerting = port.alerting
    request_model = silence_model(alerting.rule_names())

    @router.get("/api/alerts", response_model=AlertsBody)
    def list_alerts() -> dict[str, Any]:
        """Alerts firing now (rule, node, severity, value, since) and delivery counters."""
        return {"alerts": alerting.firing(), "delivery": alerting.delivery_stats()}

    @router.get("/api/alerts/history", response_model=HistoryBody, responses=error_responses(422))
    def history(
        limit: int = Query(100, ge=1, le=1000, description="events to return"),
        node: str | None = Query(
            None, pattern=NODE_OR_CLUSTER_PATTERN, description="one node (or _cluster) only"
        ),
    ) -> dict[str, Any]:
        """What happened, newest first: firing, resolved, one-shots, flapping."""
        return {"events": alerting.history(limit, node)}

    @router.get("/api/alerts/silences", response_model=SilencesBody)
    def list_silences() -> dict[str, Any]:
        """Silences that have not ended."""
        return {"silences": [s.to_api() for s in alerting.silences()]}

    def add_silence(request: SilenceRequest) -> dict[str, Any]:
        """Mute notifications for a node (or glob) and a rule (or all) for a while."""
        body = request
        try:
            seconds = parse_duration(body.duration)
        except ValueError as error:
            raise HTTPException(422, f"for: {error}") from error
        if not 0 < seconds <= MAX_SILENCE_S:
            raise HTTPException(422, "for: must be more than 0 seconds and under 10,000 days")
        try:
            rule = None if body.rule is None else str(getattr(body.rule, "value", body.rule))
            silence = alerting.silence(body.node, rule, seconds, body.comment)
        except SilenceError as error:
            raise HTTPException(422, str(error)) from error
        except StoreBusyError as error:
            raise HTTPException(503, str(error)) from error
        return silence.to_api()

    # The body's model lists this master's rules; it is known only now, so the annotation is
    # set before FastAPI reads the signature.
    add_silence.__annotations__["request"] = request_model
    router.post(
        "/api/alerts/silences",
        status_code=201,
        response_model=SilenceBody,
        dependencies=guarded,
        responses=error_responses(400, *auth, 422, 503),
    )(add_silence)

    @router.delete(
        "/api/alerts/silences/{silence_id}",
        status_code=204,
        response_class=Response,
        dependencies=guarded,
        responses=error_responses(*auth, 404, 422, 503),
    )
    def remove_silence(silence_id: int = Path(ge=1, le=2**62)) -> Response:
        """End a silence now; notifications it held back are sent."""
        try:
            existed = alerting.unsilence(silence_id)
        except StoreBusyError as error:
            raise HTTPException(503, str(error)) from error
        if not existed:
            raise HTTPException(404, f"no silence {silence_id}")
        return Response(status_code=204)

    @router.post(
        "/api/alerts/test",
        response_model=TestBody,
        dependencies=guarded,
        responses=error_responses(400, *auth, 404, 422),
    )
    def test(request: TestRequest | None = None) -> dict[str, Any]:
        """Send a test notification through each channel (or one); whether each accepted."""
        index = request.channel if request is not None else None
        try:
            results = alerting.test(index)
        except IndexError as error:
            raise HTTPException(404, str(error)) from error
        except ValueError as error:  # no channels configured
            raise HTTPException(404, str(error)) from error
        return {
            "results": [
                {"channel": r.index, "label": r.label, "accepted": r.accepted, "error": r.error}
                for r in results
            ]
        }

    return router
