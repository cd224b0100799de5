"""Logging in and out: the login page, `POST /login`, `POST /logout` and `GET /api/me`.

The login form is a plain HTML form (it works without JavaScript). It is protected against
cross-site posting twice: its hidden CSRF field must match a cookie only this site could
set, and a browser's `Origin`, when sent, must be this site. Failed logins are throttled
per client address and per user name, and logged with the address.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from html import escape
from importlib import resources
from string import Template
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from master_service.auth.accounts import Principal
from master_service.auth.throttle import LoginThrottle
from master_service.web.access import CSRF_COOKIE, SESSION_COOKIE, Access, same_origin
from master_service.web.errors import error_responses

logger = logging.getLogger(__name__)

LOGIN_CSRF_COOKIE: Final = "picluster_login_csrf"
MAX_FORM_BYTES: Final = 4096
CONCURRENT_CHECKS: Final = 2  # scrypt needs 16 MiB each: a flood must not exhaust a Pi
_PAGE: Final = Template(
    (resources.files("master_service.web") / "static" / "login.html").read_text("utf-8")
)


class MeBody(BaseModel):
    """`GET /api/me`: who the dashboard is talking for."""

    user: str = Field(description="user name; `api_token` or `local` when not a user")
    role: str = Field(description="`viewer` or `admin`")
    via: str = Field(description="`session`, `token`, `api_token` or `local` (no login here)")
    login_required: bool


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def is_secure(request: Request) -> bool:
    """True when the browser reached us over TLS (uvicorn applies a trusted proxy's header)."""
    return request.url.scheme == "https"


def client_address(request: Request) -> str:
    """The client's address, as uvicorn saw it (a trusted proxy's X-Forwarded-For applied)."""
    return request.client.host if request.client else "unknown"


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form; 413 as soon as it is larger than a login form can be."""
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, "the form is too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:  # without a length, or lying about it
            raise HTTPException(413, "the form is too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def login_page(
    status: int, csrf: str, *, message: str = "", name: str = "", next_path: str = "/"
) -> HTMLResponse:
    """The login form, with a fresh CSRF value in its hidden field."""
    body = _PAGE.substitute(
        csrf=escape(csrf),
        next=escape(next_path),
        name=escape(name),
        message=escape(message),
        message_class="error" if message else "",
    )
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})


def login_router(access: Access, throttle: LoginThrottle) -> APIRouter:
    """Routes to log in and out, and to ask who is logged in."""
    router = APIRouter(tags=["login"])
    checking = threading.BoundedSemaphore(CONCURRENT_CHECKS)

    def check_password(name: str, password: str) -> Principal | None:
        """The user if the password is right; at most CONCURRENT_CHECKS scrypt runs at once."""
        with checking:
            return access.accounts.authenticate(name, password)

    def fresh_form(request: Request, status: int = 200, **page: Any) -> HTMLResponse:
        csrf = secrets.token_urlsafe(24)
        response = login_page(status, csrf, **page)
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            csrf,
            httponly=True,
            samesite="strict",
            secure=is_secure(request),
            path="/login",
        )
        return response

    @router.get("/login", include_in_schema=False)
    def show_login(request: Request, next: str = "/") -> Response:
        if access.identify(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        return fresh_form(request, next_path=safe_next(next))

    @router.post("/login", include_in_schema=False)
    async def log_in(request: Request) -> Response:
        form = await read_form(request)
        name, password = form.get("name", ""), form.get("password", "")
        next_path = safe_next(form.get("next"))
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        sent = form.get("csrf", "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return fresh_form(
                request, 403, message="The form expired: log in again.", next_path=next_path
            )
        if not same_origin(request):
            return fresh_form(request, 403, message="Log in from this site's own page.")
        address = client_address(request)
        wait_s = throttle.attempt(address, name)  # counted now: parallel tries cannot slip by
        if wait_s is not None:
            logger.warning("login for %r from %s refused: too many failed tries", name, address)
            response = fresh_form(
                request,
                429,
                message=f"Too many failed logins: try again in {int(wait_s) + 1} s.",
                name=name,
                next_path=next_path,
            )
            response.headers["Retry-After"] = str(int(wait_s) + 1)
            return response
        # scrypt takes tens of milliseconds and 16 MiB: off the event loop, two at a time.
        principal = await run_in_threadpool(check_password, name, password)
        if principal is None:
            logger.warning("failed login for %r from %s", name, address)
            return fresh_form(
                request,
                401,
                message="Wrong user name or password.",
                name=name,
                next_path=next_path,
            )
        throttle.succeeded(address, name)
        session = await run_in_threadpool(access.accounts.start_session, principal)
        logger.info("%s (%s) logged in from %s", name, principal.role.value, address)
        redirect = RedirectResponse(next_path, 303)
        max_age = int(access.accounts.session_ttl_s)
        secure = is_secure(request)
        redirect.set_cookie(
            SESSION_COOKIE,
            session.secret,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=secure,
        )
        # Readable by the dashboard's script, which sends it back in X-CSRF-Token; another
        # site's page can neither read it nor make the browser send it (SameSite=Strict).
        redirect.set_cookie(
            CSRF_COOKIE, session.csrf, max_age=max_age, samesite="strict", secure=secure
        )
        redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return redirect

    @router.post("/logout", include_in_schema=False)
    async def log_out(request: Request) -> Response:
        secret = request.cookies.get(SESSION_COOKIE)
        session = await run_in_threadpool(access.accounts.session, secret) if secret else None
        if session is not None:
            form = await read_form(request)
            sent = request.headers.get("X-CSRF-Token") or form.get("csrf", "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise HTTPException(403, "log out from the dashboard's own button")
            await run_in_threadpool(access.accounts.end_session, secret or "")
            logger.info("%s logged out", session.principal.name)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        response.delete_cookie(CSRF_COOKIE)
        return response

    @router.get(
        "/api/me",
        response_model=MeBody,
        responses=error_responses(*access.reader_errors),
    )
    def me(request: Request) -> dict[str, Any]:
        """Who is logged in, with which role (the dashboard hides what a viewer cannot do)."""
        principal = access.caller(request)
        if principal is None:
            raise HTTPException(401, "log in at /login", headers={"WWW-Authenticate": "Bearer"})
        return {
            "user": principal.name,
            "role": principal.role.value,
            "via": principal.via,
            "login_required": access.login_required,
        }

    return router
