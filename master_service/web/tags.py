"""Master-side node tags over HTTP: `PUT` and `DELETE /api/nodes/{node}/tags/{tag}`."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import Response

from cluster_protocol.tags import TAG_PATTERN
from master_service.storage.node_tags import TagWriteError
from master_service.web.access import Access
from master_service.web.control import NodeId
from master_service.web.errors import ErrorBody, error_responses
from master_service.web.ports import MasterPort

logger = logging.getLogger(__name__)

Tag = Annotated[
    str,
    Path(
        pattern=TAG_PATTERN.pattern,
        description="a tag: 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
    ),
]
_NOT_STORED: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "The database did not take the change in time"}
}


def tags_router(port: MasterPort, access: Access) -> APIRouter:
    """Routes that add and remove master-side tags, token-protected like other writes."""
    router = APIRouter(tags=["nodes"])
    guarded = access.admin
    auth_errors = access.admin_errors

    @router.put(
        "/api/nodes/{node}/tags/{tag}",
        dependencies=guarded,
        status_code=204,
        response_class=Response,
        responses={**error_responses(*auth_errors, 422), **_NOT_STORED},
    )
    def add_tag(node: NodeId, tag: Tag) -> Response:
        """Give a node a master-side tag (also one not heard of yet); 204 when it has it."""
        try:
            port.node_tags.add(node, tag)
        except TagWriteError as error:
            raise HTTPException(503, str(error)) from error
        return Response(status_code=204)

    @router.delete(
        "/api/nodes/{node}/tags/{tag}",
        dependencies=guarded,
        status_code=204,
        response_class=Response,
        responses={
            **error_responses(*auth_errors, 422),
            404: {"model": ErrorBody, "description": "The node has no such master-side tag"},
            **_NOT_STORED,
        },
    )
    def remove_tag(node: NodeId, tag: Tag) -> Response:
        """Remove a master-side tag (a node's own tags are its config's: 404 for those)."""
        try:
            removed = port.node_tags.remove(node, tag)
        except TagWriteError as error:
            raise HTTPException(503, str(error)) from error
        if not removed:
            raise HTTPException(404, f"node {node!r} has no master-side tag {tag!r}")
        return Response(status_code=204)

    return router
