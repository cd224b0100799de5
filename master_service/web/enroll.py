"""Enrollment over HTTP: add and remove nodes' broker clients, exchange a one-time token.

`POST /api/enrollments` and `DELETE /api/enrollments/{node}` are writes (token-protected);
`POST /api/enroll` is what a new node's installer calls: the enrollment token is its
credential, good once and for at most an hour. `GET /install/...` serves the installer.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import socket
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster_protocol.broker_url import BrokerUrlError, parse_broker_url
from cluster_protocol.node_id import (
    NODE_ID_PATTERN,
    RESERVED_USER_NAMES,
    NodeIdError,
    validate_node_id,
)
from master_service.enrollment.dynsec import (
    DynsecNotConfiguredError,
    DynsecRefusedError,
    DynsecUnavailableError,
)
from master_service.enrollment.installer import (
    ARCHIVE_NAME,
    InstallerMissingError,
    bootstrap_script,
    install_file,
)
from master_service.enrollment.service import Enrollment, TokenRejectedError
from master_service.enrollment.tokens import TOKEN_TTL_S, TokenStoreError
from master_service.web.access import Access
from master_service.web.errors import ErrorBody, error_responses
from master_service.web.ports import MasterPort

logger = logging.getLogger(__name__)

# What parse_broker_url takes, without a user (the node's id is the user) or password.
_PORT: Final = (
    r"([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
BROKER_PATTERN: Final = rf"^mqtts?://[A-Za-z0-9]([A-Za-z0-9.-]{{0,252}})(:{_PORT})?/?$"
# Broker user names of the master and Home Assistant: never a node's.
_NOT_RESERVED: Final[dict[str, Any]] = {"not": {"enum": sorted(RESERVED_USER_NAMES)}}
Node = Annotated[
    str,
    Path(
        pattern=NODE_ID_PATTERN.pattern,
        description="node id",
        json_schema_extra=_NOT_RESERVED,
    ),
]
_BROKER: Final[dict[int | str, dict[str, Any]]] = {
    409: {
        "model": ErrorBody,
        "description": (
            "The broker has no dynamic security plugin answering the master (a head with the "
            "static password file): add the node's user by hand, or switch (docs/deploy.md)"
        ),
    },
    502: {"model": ErrorBody, "description": "The broker's dynamic security plugin refused"},
    503: {
        "model": ErrorBody,
        "description": (
            "Enrollment is not available: the broker or its dynamic security plugin did not "
            "answer, or the database takes no writes (`detail` says which)"
        ),
    },
}
_REJECTED: Final[dict[int | str, dict[str, Any]]] = {
    403: {"model": ErrorBody, "description": "The token is unknown, used already, or expired"}
}
_MISSING: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ErrorBody, "description": "This master has no installer or wheel to serve"}
}


class EnrollmentRequest(BaseModel):
    """Body of `POST /api/enrollments`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    node: str = Field(
        pattern=NODE_ID_PATTERN.pattern,
        description="the new node's id",
        json_schema_extra=_NOT_RESERVED,
    )
    ttl_s: float = Field(
        TOKEN_TTL_S, gt=0, le=TOKEN_TTL_S, description="seconds the token is good for"
    )
    broker: str | None = Field(
        None,
        max_length=300,
        pattern=BROKER_PATTERN,
        description="broker URL for the node (mqtt://host:port); default: the host the node "
        "reaches the master at, with the master's broker port",
    )
    master_url: str | None = Field(
        None,
        max_length=300,
        pattern=r"^https?://[^\s'\"]+$",
        description="the master's address as nodes reach it (default: from this request)",
    )

    @field_validator("node")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        try:
            validate_node_id(value)
        except NodeIdError as error:
            raise ValueError(str(error)) from error
        return value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = parse_broker_url(value)
        except BrokerUrlError as error:
            raise ValueError(str(error)) from error
        if address.password is not None:
            raise ValueError("the broker URL must not carry a password")
        return value


class EnrollmentBody(BaseModel):
    """A node added: the one command to run on it, and its token."""

    node: str
    token: str = Field(description="the one-time enrollment token (shown once)")
    expires_at: float = Field(description="Unix seconds; the token is refused after")
    master_url: str
    command: str = Field(description="run this on the new node, as root")


class ExchangeRequest(BaseModel):
    """Body of `POST /api/enroll`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    token: str = Field(min_length=1, max_length=200)


class CredentialsBody(BaseModel):
    """What a node gets for its token, once."""

    node: str
    broker: str = Field(description="broker URL with the node's user name")
    password: str = Field(description="the node's broker password")


class RemovedBody(BaseModel):
    """`DELETE /api/enrollments/{node}`: what was there."""

    node: str
    client_deleted: bool = Field(description="a broker client was deleted (and disconnected)")
    forgotten: bool = Field(description="the master knew the node and forgot it")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def master_url_for(request: Request, given: str | None) -> str:
    """The master's URL as nodes reach it: given, else this request's.

    A loopback host is replaced by this machine's name: the CLI usually calls over 127.0.0.1.
    """
    if given:
        return given.rstrip("/")
    base = str(request.base_url).rstrip("/")
    host = request.url.hostname or ""
    if _is_loopback(host):
        port = request.url.port
        return f"{request.url.scheme}://{socket.gethostname()}" + (f":{port}" if port else "")
    return base


def enroll_command(master_url: str, token: str) -> str:
    """The one command to run on a new node."""
    url = shlex.quote(master_url)
    return (
        f"curl -fsSL {shlex.quote(master_url + '/install/node.sh')} | "
        f"sudo sh -s -- --enroll {url} {shlex.quote(token)}"
    )


def enroll_router(port: MasterPort, access: Access) -> APIRouter:
    """Enrollment routes: broker clients for new nodes, and the one-time token exchange."""
    router = APIRouter(tags=["enrollment"])
    guarded = access.admin
    auth_errors = access.admin_errors

    def enrollment() -> Enrollment:
        return port.enrollment

    def broker_failed(error: Exception) -> HTTPException:
        if isinstance(error, DynsecNotConfiguredError):
            return HTTPException(409, str(error))
        if isinstance(error, DynsecRefusedError):
            return HTTPException(502, str(error))
        return HTTPException(503, str(error))

    @router.post(
        "/api/enrollments",
        dependencies=guarded,
        status_code=201,
        response_model=EnrollmentBody,
        responses={**error_responses(400, *auth_errors, 422), **_BROKER},
    )
    def add_node(body: EnrollmentRequest, request: Request) -> EnrollmentBody:
        """Create broker client `node` with its role; return a one-time token and the command."""
        try:
            issued = enrollment().add(body.node, body.ttl_s, body.broker)
        except (DynsecRefusedError, DynsecUnavailableError, TokenStoreError) as error:
            raise broker_failed(error) from error
        master = master_url_for(request, body.master_url)
        return EnrollmentBody(
            node=issued.node,
            token=issued.token,
            expires_at=issued.expires,
            master_url=master,
            command=enroll_command(master, issued.token),
        )

    @router.delete(
        "/api/enrollments/{node}",
        dependencies=guarded,
        response_model=RemovedBody,
        responses={**error_responses(*auth_errors, 422), **_BROKER},
    )
    def remove_node(node: Node) -> RemovedBody:
        """Delete broker client `node` (the broker disconnects it at once) and forget it."""
        try:
            validate_node_id(node)
        except NodeIdError as error:
            raise HTTPException(422, f"path parameter node: {error}") from error
        try:
            deleted, known = enrollment().remove(node)
        except (DynsecRefusedError, DynsecUnavailableError, TokenStoreError) as error:
            raise broker_failed(error) from error
        return RemovedBody(node=node, client_deleted=deleted, forgotten=known)

    @router.post(
        "/api/enroll",
        response_model=CredentialsBody,
        responses={**error_responses(400, 422), **_REJECTED, **_BROKER},
    )
    def exchange(body: ExchangeRequest, request: Request) -> CredentialsBody:
        """Exchange a one-time token for the node's broker URL and password (once)."""
        service = enrollment()
        try:
            credentials = service.exchange(body.token)
        except TokenRejectedError as error:
            logger.warning(
                "enrollment token refused from %s", request.client.host if request.client else "?"
            )
            raise HTTPException(403, str(error)) from error
        except (DynsecRefusedError, DynsecUnavailableError, TokenStoreError) as error:
            raise broker_failed(error) from error
        broker = service.broker_for(
            credentials.node, credentials.broker, request.url.hostname or "localhost"
        )
        return CredentialsBody(node=credentials.node, broker=broker, password=credentials.password)

    @router.get(
        "/install/node.sh",
        response_class=Response,
        responses={
            200: {"content": {"text/x-shellscript": {}}, "description": "The script"},
            **_MISSING,
        },
    )
    def node_installer() -> Response:
        """A POSIX sh script: fetches picluster and its node installer from here, runs it."""
        try:
            script = bootstrap_script()
        except InstallerMissingError as error:
            raise HTTPException(404, str(error)) from error
        return Response(script, media_type="text/x-shellscript")

    @router.get(
        "/install/{name}",
        response_class=Response,
        responses={
            200: {"content": {"application/gzip": {}}, "description": "The archive"},
            **_MISSING,
            **error_responses(422),
        },
    )
    def install_archive(
        name: Annotated[
            str, Path(pattern=r"^[A-Za-z0-9_.+-]{1,200}$", description=f"{ARCHIVE_NAME}")
        ],
    ) -> FileResponse:
        """The picluster source and node installer (`picluster.tar.gz`), as node.sh fetches it."""
        try:
            path = install_file(name)
        except InstallerMissingError as error:
            raise HTTPException(404, str(error)) from error
        return FileResponse(path, media_type="application/gzip", filename=path.name)

    return router
