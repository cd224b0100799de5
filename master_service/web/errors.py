"""Error answers: one JSON shape, `{"detail": "..."}`, for every status the API documents."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

logger = logging.getLogger(__name__)

DESCRIPTIONS: Final[dict[int, str]] = {
    400: "The body could not be read: not UTF-8 text",
    401: "A login is needed: a session (POST /login) or `Authorization: Bearer <token>`",
    403: "Logged in, but not allowed: a viewer's write, or a session's write without X-CSRF-Token",
    404: "No such node",
    409: "The node is offline: nothing would receive the command",
    413: "The command is larger than a message may be",
    422: "A parameter or the body is not valid; `detail` says which and what is allowed",
    503: (
        "The master cannot do it now: it is not connected to the broker, or its database "
        "takes no writes (`detail` says which)"
    ),
}
METHODS: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
# Where a validation error sits, in words: ("body", "count") -> "body field count".
_PLACES: Final = {
    "body": "body field",
    "query": "query parameter",
    "path": "path parameter",
    "header": "header",
}


class ErrorBody(BaseModel):
    """Every error answer: a sentence saying what went wrong and what is allowed."""

    detail: str = Field(description="what went wrong, for people")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, each an `ErrorBody`."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def validation_detail(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one sentence: `body field count: Input should be ...`."""
    parts: list[str] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        place = _PLACES.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        where = f"{place} {name}" if name else place
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this request's path (a path has one route per method)."""
    # Asked route by route through `matches`, the routers' own public test: included routers
    # are not flattened into plain routes in every FastAPI version. Mounts (static files)
    # match every method and say for themselves what they allow.
    routes = [route for route in app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as `ErrorBody` JSON, never HTML, never FastAPI's list of errors."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(error.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the methods of the first route that matched the path;
            # GET and DELETE of one path are two routes, and Allow must list both.
            allowed = allowed_methods(app, request.scope)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        return JSONResponse({"detail": str(error.detail)}, error.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        logger.exception("API error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, 500)
