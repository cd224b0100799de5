"""Users and logins against a running master: the CLI that makes users, the login form."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def users_cli(
    db: Path | str, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cluster-master users ARGS --db DB`, a password (if any) on stdin."""
    stdin_flag = ["--password-stdin"] if password is not None else []
    return subprocess.run(
        [sys.executable, "-m", "master_service", "users", *args, "--db", str(db), *stdin_flag],
        input=(password + "\n") if password is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )


def add_user(db: Path | str, name: str, role: str, password: str) -> None:
    """Add a user through the CLI, as an admin on the head would."""
    done = users_cli(db, "add", name, "--role", role, password=password)
    assert done.returncode == 0, done.stderr


def login_form(client: httpx.Client) -> str:
    """Open the login page (which sets its CSRF cookie); the form's CSRF value."""
    page = client.get("/login")
    assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found, "the login page has no CSRF field"
    return found.group(1)


def log_in(client: httpx.Client, name: str, password: str, **headers: str) -> httpx.Response:
    """Fill in and send the login form as a browser would (the redirect is not followed)."""
    csrf = login_form(client)
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf": csrf, "next": "/"},
        headers=headers,
    )


def csrf_header(client: httpx.Client) -> dict[str, str]:
    """The X-CSRF-Token header the dashboard sends with a session's writes."""
    return {"X-CSRF-Token": client.cookies["picluster_csrf"]}
