"""Who may do what over HTTP: FastAPI dependencies for reading and for admin writes.

Once the API is reachable beyond this machine (or `require_login` is set), reading needs a
login (a session cookie from `/login`, or `Authorization: Bearer` with a user's API token or
the master's `api_token`), and writes need the admin role. A session's writes must also
carry its CSRF token in `X-CSRF-Token`: the cookie alone, which a browser attaches to any
request, proves nothing. On localhost without a login, reading stays open, and writes are
open too unless `api_token` is set, as before logins existed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Final
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Security
from fastapi.params import Depends
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from master_service.auth.accounts import Accounts, Principal, Role

logger = logging.getLogger(__name__)

SESSION_COOKIE: Final = "picluster_session"
CSRF_COOKIE: Final = "picluster_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
API_TOKEN_USER: Final = "api_token"
LOCAL_USER: Final = "local"

_bearer = HTTPBearer(
    auto_error=False,
    description="a user's API token (`cluster-master users token NAME`) or the master's api_token",
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="the session cookie set by POST /login; writes also need X-CSRF-Token",
)


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site's page."""
    origin = request.headers.get("Origin")
    if origin is None:  # older browsers and scripts send none
        return True
    return urlsplit(origin).netloc == request.headers.get("Host", "")


def refuse_other_sites(request: Request) -> None:
    """403 for a write a browser sent from another site's page (its `Origin` is not ours)."""
    if not same_origin(request):
        raise HTTPException(403, "a write from another site's page is refused")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


class Access:
    """The login rules of one master, and the dependencies that apply them."""

    def __init__(self, accounts: Accounts, api_token: str | None, login_required: bool) -> None:
        self.accounts = accounts
        self.login_required = login_required
        self._api_token = api_token.encode() if api_token else None  # "" is no token
        self.writes_open = not login_required and self._api_token is None
        self.reader: list[Depends] = (
            [Security(self._require(Role.VIEWER))] if login_required else []
        )
        # Open writes (localhost, no token) still refuse another site's page: a browser
        # sends a form-like POST cross-site without asking first.
        self.admin: list[Depends] = (
            [Security(refuse_other_sites)]
            if self.writes_open
            else [Security(self._require(Role.ADMIN))]
        )

    @property
    def admin_errors(self) -> tuple[int, ...]:
        """The statuses an admin route can answer for want of rights."""
        return (403,) if self.writes_open else (401, 403)

    @property
    def reader_errors(self) -> tuple[int, ...]:
        """The statuses a read can answer for want of a login."""
        return (401,) if self.login_required else ()

    def identify(self, request: Request) -> Principal | None:
        """Who sent the request, from its bearer token or session cookie; None: nobody.

        A bearer token that matches nothing is refused (401) rather than ignored, and a
        session's write without its CSRF token is refused (403).
        """
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        if scheme.lower() == "bearer" and token:
            return self._token_principal(token)
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            return None
        session = self.accounts.session(secret)
        if session is None:
            return None
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                logger.warning(
                    "refused %s %s by %s: missing or wrong %s",
                    request.method,
                    request.url.path,
                    session.principal.name,
                    CSRF_HEADER,
                )
                raise HTTPException(403, f"a write with a session needs its {CSRF_HEADER} header")
        return session.principal

    def _token_principal(self, token: str) -> Principal:
        if self._api_token is not None and hmac.compare_digest(token.encode(), self._api_token):
            return Principal(API_TOKEN_USER, Role.ADMIN, "api_token")
        principal = self.accounts.token_principal(token)
        if principal is None:
            raise _unauthorized("the bearer token is not valid (revoked, or its user removed)")
        return principal

    def _require(self, role: Role) -> Callable[..., Principal]:
        def require(
            request: Request,
            # Read again in identify(); declared here so the OpenAPI shows both ways in.
            _bearer_credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
            _session_cookie: Annotated[str | None, Security(_cookie)],
        ) -> Principal:
            """The caller, if logged in with at least `role`; else 401 or 403."""
            principal = self.identify(request)
            if principal is None:
                raise _unauthorized(
                    "log in at /login, or send Authorization: Bearer <API token>"
                    if self.login_required
                    else "this endpoint needs Authorization: Bearer <api_token> or an admin login"
                )
            if role is Role.ADMIN and not principal.is_admin:
                raise HTTPException(
                    403, f"this needs the admin role; {principal.name} is a {principal.role.value}"
                )
            return principal

        return require

    def caller(self, request: Request) -> Principal | None:
        """The caller, or the local user when no login is needed here; None: log in first."""
        principal = self.identify(request)
        if principal is None and not self.login_required:
            role = Role.ADMIN if self.writes_open else Role.VIEWER
            return Principal(LOCAL_USER, role, "local")
        return principal
