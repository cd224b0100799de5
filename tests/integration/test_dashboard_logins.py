"""Logins and roles in the dashboard (issue 13, item 5), in real headless Chromium.

The rack of test_dashboard_actions (a master and three nodes over a real Mosquitto), with a
master that requires a login: a viewer logs in through the form and sees no command buttons,
and a write forged from its page is refused; an admin presses Refresh and sees the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_dashboard_actions import (
    Rack,
    buttons,
    click,
    results,
    screenshot,
    start_rack,
    stop_rack,
)
from tests.integration.test_dashboard_browser import LivePage
from tests.support.broker import MosquittoBroker
from tests.support.logins import add_user
from tests.support.waiting import wait_until

API_TOKEN = "dashboard-logins-token"
PASSWORDS = {"alice": "alice-admin-pass", "victor": "victor-viewer-pass"}


@pytest.fixture
def locked_rack(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rack]:
    """The rack, its master requiring a login, with admin `alice` and viewer `victor`."""
    env = {"CLUSTER_REQUIRE_LOGIN": "true", "CLUSTER_API_TOKEN": API_TOKEN}
    started = start_rack(broker, tmp_path / "rack", ("a", "b", "c"), env)
    for name, value in started.master.database.env.items():  # for `cluster-master users`
        monkeypatch.setenv(name, value)
    add_user(started.master.db, "alice", "admin", PASSWORDS["alice"])
    add_user(started.master.db, "victor", "viewer", PASSWORDS["victor"])
    yield started
    stop_rack(started)


def log_in(page: LivePage, name: str) -> None:
    """Type a user name and password into the login form and press Log in."""
    wait_until(
        lambda: (
            page.evaluate("location.pathname") == "/login"
            and page.evaluate("!!document.querySelector('#login-submit')")
        ),
        15,
        0.1,
        "the login page",
    )
    page.evaluate(
        f"document.querySelector('#login-name').value = {json.dumps(name)};"
        f"document.querySelector('#login-password').value = {json.dumps(PASSWORDS[name])};"
    )
    click(page, "#login-submit")
    wait_until(
        lambda: page.evaluate("document.body.dataset.role") in ("viewer", "admin"),
        15,
        0.1,
        f"the dashboard, logged in as {name}",
    )


def fetch_status(page: LivePage, path: str, headers: dict[str, str]) -> int:
    """POST a command from the page's own script, with the browser's cookies; the status."""
    script = (
        f"fetch({json.dumps(path)}, {{method: 'POST', credentials: 'same-origin',"
        f" headers: {json.dumps({'Content-Type': 'application/json', **headers})},"
        " body: JSON.stringify({command: 'reboot', timeout_s: 5})}).then(r => r.status)"
    )
    answer = page.send(
        "Runtime.evaluate",
        {"expression": script, "awaitPromise": True, "returnByValue": True},
        sessionId=page._session,
    )
    status: int = answer["result"]["value"]
    return status


def visible(page: LivePage, selector: str) -> bool:
    """True when the element is shown (not hidden, not display: none)."""
    shown: bool = page.evaluate(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        " return !!el && el.offsetParent !== null; })()"
    )
    return shown


def test_a_viewer_sees_no_command_buttons_and_its_forged_post_is_refused(
    locked_rack: Rack, chromium_binary: str, tmp_path: Path
) -> None:
    rack = locked_rack
    page = LivePage(chromium_binary, tmp_path / "viewer", f"{rack.master.api}/")
    try:
        log_in(page, "victor")  # the dashboard sent the browser to the login page first
        assert page.evaluate("document.querySelector('#who-name').textContent") == (
            "victor (viewer)"
        )
        wait_until(
            lambda: page.evaluate("document.querySelectorAll('#nodes [data-node]').length") == 3,
            15,
            0.1,
            "the viewer's overview with three nodes",
        )
        assert not visible(page, "#enroll-open")
        assert not visible(page, "#send-box")
        page.evaluate(f"location.hash = '#/node/{rack.a}'")
        wait_until(
            lambda: page.evaluate("document.querySelector('#node-model')?.textContent"),
            15,
            0.1,
            "the node page",
        )
        assert buttons(page) == []  # node a advertises reboot; a viewer gets no button
        screenshot(page, "dashboard-viewer-node.png")

        path = f"/api/nodes/{rack.a}/commands"
        csrf = page.evaluate("document.cookie.match(/picluster_csrf=([^;]+)/)[1]")
        assert fetch_status(page, path, {}) == 403  # no CSRF token
        assert fetch_status(page, path, {"X-CSRF-Token": csrf}) == 403  # a viewer's
        assert rack.commands(rack.a) == []  # nothing reached the node
    finally:
        page.close()


def test_an_admin_presses_refresh_and_sees_the_answer(
    locked_rack: Rack, chromium_binary: str, tmp_path: Path
) -> None:
    rack = locked_rack
    page = LivePage(chromium_binary, tmp_path / "admin", f"{rack.master.api}/")
    try:
        log_in(page, "alice")
        assert visible(page, "#enroll-open")
        page.evaluate(f"location.hash = '#/node/{rack.a}'")
        wait_until(lambda: buttons(page), 15, 0.1, "the node page's command buttons")
        assert buttons(page) == ["Refresh", "Ping", "Run hello…", "Reboot…"]
        click(page, '[data-action="refresh"]')
        wait_until(
            lambda: [r["status"] for r in results(page)] == ["ok"], 15, 0.1, "refresh answered"
        )
        assert "metrics_seq" in results(page)[0]["text"]
        assert rack.commands(rack.a) == ["refresh"]

        click(page, "#logout")
        wait_until(lambda: page.evaluate("location.pathname") == "/login", 15, 0.1, "logged out")
        answer: Any = page.send(
            "Runtime.evaluate",
            {
                "expression": "fetch('/api/nodes').then(r => r.status)",
                "awaitPromise": True,
                "returnByValue": True,
            },
            sessionId=page._session,
        )
        assert answer["result"]["value"] == 401
    finally:
        page.close()
