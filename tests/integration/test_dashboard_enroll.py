"""The dashboard's "Add a node" (issue 13, item 1), in real headless Chromium.

Against a real master managing a real Mosquitto with the dynamic security plugin: the dialog
shows exactly the command the API returned, and the token in it works once. Against a master on
a broker without the plugin, the dialog shows the API's 409 sentence.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_dashboard_actions import (  # fixtures are found by name
    click,
    page_factory,  # noqa: F401
    screenshot,
)
from tests.integration.test_dashboard_browser import LivePage
from tests.integration.test_enrollment import connect
from tests.support.broker import MosquittoBroker
from tests.support.dynsec_broker import DynsecBroker
from tests.support.processes import RunningMaster, start_master
from tests.support.waiting import wait_until

PREFIX = "dse"

# Keeps the API's answer to the page's POST /api/enrollments, to compare with what is shown.
RECORD_ANSWERS = """
(() => {
  window.__enrollAnswers = [];
  const original = window.fetch;
  window.fetch = async (...args) => {
    const res = await original(...args);
    if (String(args[0]).endsWith('/api/enrollments')) {
      window.__enrollAnswers.push({status: res.status, body: await res.clone().json()});
    }
    return res;
  };
})()
"""


@pytest.fixture
def dynsec_master(tmp_path: Path) -> Iterator[tuple[DynsecBroker, RunningMaster]]:
    """A dynsec broker and a master (no API token, loopback) whose broker user is its admin."""
    broker = DynsecBroker(tmp_path / "broker", prefix=PREFIX).start()
    try:
        master = start_master(
            broker.admin_url(),
            tmp_path / "master",
            "--prefix",
            PREFIX,
            "--no-ha-discovery",
            env={"CLUSTER_PASSWORD": broker.admin_password},
        )
    except BaseException:
        broker.stop()
        raise
    yield broker, master
    master.stop()
    broker.stop()


def exchange(master: RunningMaster, token: str) -> tuple[int, Any]:
    """(status, JSON) of `POST /api/enroll`, as the node installer does it."""
    request = urllib.request.Request(
        master.api + "/api/enroll",
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def shown(page: LivePage) -> dict[str, Any]:
    """What the dialog shows."""
    found: dict[str, Any] = page.evaluate(
        "({open: document.querySelector('#enroll').open,"
        " error: document.querySelector('#enroll-error').hidden ? null"
        "   : document.querySelector('#enroll-error').textContent,"
        " result: !document.querySelector('#enroll-result').hidden,"
        " command: document.querySelector('#enroll-command').textContent,"
        " expires: document.querySelector('#enroll-expires').textContent,"
        " expiresAt: document.querySelector('#enroll-expires').dataset.expiresAt ?? null,"
        " copied: document.querySelector('#enroll-copied').textContent,"
        " font: getComputedStyle(document.querySelector('#enroll-command')).fontFamily})"
    )
    return found


def add(page: LivePage, node: str) -> None:
    """Type a node id into the open dialog and press Add."""
    page.evaluate(
        f"(() => {{ document.querySelector('#enroll-node').value = {json.dumps(node)};"
        " document.querySelector('#enroll-submit').click(); })()"
    )


def answers(page: LivePage) -> list[dict[str, Any]]:
    """The API's answers to the page's enrollment requests."""
    found: list[dict[str, Any]] = page.evaluate("window.__enrollAnswers")
    return found


def open_dialog(page: LivePage) -> None:
    """Press "Add a node" on the overview."""
    ready = "document.querySelector('#enroll-open')?.dataset.ready === 'true'"
    wait_until(lambda: page.evaluate(ready), 15, 0.1, "the button ready")
    page.evaluate(RECORD_ANSWERS)
    click(page, "#enroll-open")
    wait_until(lambda: shown(page)["open"], 5, 0.05, "the dialog open")


def evaluate_async(page: LivePage, expression: str) -> Any:
    """The value of a JavaScript expression whose promise the page awaits."""
    result = page.send(
        "Runtime.evaluate",
        {"expression": expression, "returnByValue": True, "awaitPromise": True},
        sessionId=page._session,
    )
    return result["result"].get("value")


def test_add_a_node_shows_the_api_command_whose_token_works_once(
    dynsec_master: tuple[DynsecBroker, RunningMaster],
    page_factory: Any,  # noqa: F811
) -> None:
    broker, master = dynsec_master
    page = page_factory(f"{master.api}/#/")
    open_dialog(page)

    # Ids the API would refuse are refused on the page, without a request.
    add(page, "homeassistant")
    wait_until(lambda: shown(page)["error"], 5, 0.05, "the reserved id refused")
    assert "reserved" in shown(page)["error"]
    add(page, "Pi 05")
    wait_until(lambda: "lowercase" in (shown(page)["error"] or ""), 5, 0.05, "a bad id refused")
    assert answers(page) == []
    assert not shown(page)["result"]

    add(page, "pi-05")
    wait_until(lambda: shown(page)["result"], 30, 0.1, "the command shown")
    [answer] = answers(page)
    assert answer["status"] == 201
    body = answer["body"]
    view = shown(page)
    assert view["error"] is None
    assert view["command"] == body["command"]
    assert body["node"] == "pi-05"
    assert body["token"] in view["command"]
    assert "monospace" in view["font"]
    assert view["expiresAt"] == str(body["expires_at"])
    assert "pi-05" in view["expires"]
    assert "works once" in view["expires"]
    screenshot(page, "dashboard-enroll.png")

    # Copy: with the clipboard API, the clipboard holds the command.
    page.send(
        "Browser.grantPermissions",
        {"origin": master.api, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    click(page, "#enroll-copy")
    wait_until(lambda: shown(page)["copied"], 5, 0.05, "the copy done")
    assert shown(page)["copied"] == "Copied."
    assert evaluate_async(page, "navigator.clipboard.readText()") == body["command"]
    # Without the clipboard API (plain http on a LAN address), the command is selected.
    page.evaluate(
        "(() => { Object.defineProperty(navigator, 'clipboard', {value: undefined});"
        " document.querySelector('#enroll-copied').textContent = ''; })()"
    )
    click(page, "#enroll-copy")
    wait_until(lambda: shown(page)["copied"], 5, 0.05, "the fallback done")
    assert shown(page)["copied"].startswith("Selected")
    assert page.evaluate("window.getSelection().toString()") == body["command"]

    # The token in the shown command works once, and gives a login the broker takes.
    token = view["command"].split()[-1]
    assert token == body["token"]
    status, credentials = exchange(master, token)
    assert status == 200, credentials
    assert credentials["node"] == "pi-05"
    client, code = connect(broker, "pi-05", credentials["password"])
    client.loop_stop()
    client.disconnect()
    assert code == 0
    status, refused = exchange(master, token)
    assert status == 403, refused


def test_add_a_node_without_the_plugin_shows_the_api_sentence(
    broker: MosquittoBroker,
    tmp_path: Path,
    page_factory: Any,  # noqa: F811
) -> None:
    master = start_master(
        broker.url, tmp_path / "master", "--prefix", "dsn", "--no-ha-discovery", env=None
    )
    try:
        page = page_factory(f"{master.api}/#/")
        open_dialog(page)
        add(page, "pi-12")
        wait_until(lambda: shown(page)["error"], 40, 0.1, "the refusal shown")
        [answer] = answers(page)
        assert answer["status"] == 409
        detail = answer["body"]["detail"]
        assert "dynamic security plugin" in detail
        assert shown(page)["error"] == f"Could not add pi-12: HTTP 409: {detail}"
        assert not shown(page)["result"]
        assert page.evaluate("document.querySelector('#enroll-submit').disabled") is False
    finally:
        master.stop()
