"""Actions in the dashboard (issue 13, item 4), in real headless Chromium against a real cluster.

`cluster-master run` and three `cluster-node run` processes tagged `rack1` over a real
Mosquitto. The first node allows reboot, with `sh -c 'kill $PPID'` as its reboot action (it
would only stop the agent), and defines a task; the others advertise only what every agent obeys.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_dashboard_browser import LivePage, texts
from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
TOKEN = "dashboard-actions-token"
NODE_CONFIG = """
allow_reboot = true
reboot_command = ["sh", "-c", "kill $PPID"]

[tasks.hello]
command = ["{py}", "-c", "print('hello from the task')"]
"""


@dataclass
class Rack:
    """A master and its nodes, all tagged rack1; `a` allows reboot and has the task `hello`."""

    master: RunningMaster
    nodes: dict[str, Service]

    @property
    def a(self) -> str:
        """The node that allows reboot and has the task."""
        return next(iter(self.nodes))

    @property
    def b(self) -> str:
        """A plain node."""
        return list(self.nodes)[1]

    @property
    def c(self) -> str:
        """Another plain node."""
        return list(self.nodes)[2]

    def commands(self, node: str) -> list[str]:
        """The commands the master sent the node, newest first, from its command log."""
        log = self.master.get(f"/api/nodes/{node}/commands")["commands"]
        return [entry["command"] for entry in log]

    def wait_online(self, *nodes: str) -> None:
        """Until every node is online with metrics and its advertised commands."""

        def ready() -> bool:
            views = [self.master.node(n) or {} for n in nodes]
            return all(
                v.get("state") == "online" and v.get("metrics") and "commands" in v["details"]
                for v in views
            )

        wait_until(ready, 30, 0.1, f"{list(nodes)} online with metrics")


def start_rack(
    broker: MosquittoBroker, workdir: Path, names: tuple[str, ...], env: dict[str, str] | None
) -> Rack:
    """Start a master (with `env`) and one node per name, the first with NODE_CONFIG."""
    prefix = f"da{uuid.uuid4().hex[:8]}"
    config = workdir / "node.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(NODE_CONFIG.format(py=sys.executable))
    master = start_master(
        broker.url, workdir / "master", "--prefix", prefix, "--no-ha-discovery", env=env
    )
    ids = [f"{prefix}-{name}" for name in names]
    nodes: dict[str, Service] = {}
    rack = Rack(master, nodes)
    try:
        for i, node_id in enumerate(ids):
            extra = ["--config", str(config)] if i == 0 else []
            nodes[node_id] = start_node(
                broker.url, workdir, node_id, "--prefix", prefix, "--tag", "rack1", *extra
            )
        rack.wait_online(*ids)
    except BaseException:
        stop_rack(rack)
        raise
    return rack


def stop_rack(rack: Rack) -> None:
    """Stop every node, then the master."""
    for node in rack.nodes.values():
        node.stop()
    rack.master.stop()


@pytest.fixture
def rack(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rack]:
    """Three nodes tagged rack1 and a master without a token (loopback)."""
    started = start_rack(broker, tmp_path / "rack", ("a", "b", "c"), None)
    yield started
    stop_rack(started)


@pytest.fixture
def page_factory(chromium_binary: str, tmp_path: Path) -> Iterator[Any]:
    """Open live pages; all are closed at the end."""
    opened: list[LivePage] = []

    def open_page(url: str) -> LivePage:
        page = LivePage(chromium_binary, tmp_path / f"profile{len(opened)}", url)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def click(page: LivePage, selector: str) -> None:
    """Click the element a CSS selector finds, as a user would."""
    found = page.evaluate(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        " if (!el) return false; el.click(); return true; })()"
    )
    assert found, f"nothing on the page matches {selector}"


def results(page: LivePage) -> list[dict[str, str]]:
    """The node page's result list, newest first: status and text of each."""
    found: list[dict[str, str]] = page.evaluate(
        "[...document.querySelectorAll('#action-results li')]"
        ".map(li => ({status: li.dataset.status, text: li.textContent}))"
    )
    return found


def dialog(page: LivePage) -> dict[str, Any]:
    """Whether the confirmation is open, and what it says."""
    shown: dict[str, Any] = page.evaluate(
        "({open: document.querySelector('#confirm').open,"
        " title: document.querySelector('#confirm-title').textContent,"
        " ok: document.querySelector('#confirm-ok').textContent})"
    )
    return shown


def buttons(page: LivePage) -> list[str]:
    """The node page's command buttons, in order."""
    return texts(page, "#action-buttons button")


def screenshot(page: LivePage, name: str) -> None:
    """Save what the page shows, for a person to look at."""
    shot = page.send("Page.captureScreenshot", {"format": "png"}, sessionId=page._session)
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_node_page_refresh_answers_inline_and_reboot_asks_naming_the_node(
    rack: Rack, page_factory: Any
) -> None:
    page = page_factory(f"{rack.master.api}/#/node/{rack.a}")
    wait_until(lambda: buttons(page), 15, 0.1, "the node page's command buttons")
    assert buttons(page) == ["Refresh", "Ping", "Run hello…", "Reboot…"]

    click(page, '[data-action="refresh"]')
    wait_until(lambda: [r["status"] for r in results(page)] == ["ok"], 15, 0.1, "refresh answered")
    [answer] = results(page)
    assert "Refresh" in answer["text"]
    assert "metrics_seq" in answer["text"]
    assert rack.commands(rack.a) == ["refresh"]

    # Reboot asks first, naming the node; Cancel sends nothing.
    click(page, '[data-action="reboot"]')
    wait_until(lambda: dialog(page)["open"], 5, 0.05, "the confirmation open")
    shown = dialog(page)
    assert shown["title"] == f"Reboot {rack.a}?"
    assert shown["ok"] == f"Reboot {rack.a}"
    screenshot(page, "dashboard-actions-confirm.png")
    click(page, "#confirm-cancel")
    wait_until(lambda: not dialog(page)["open"], 5, 0.05, "the confirmation closed")
    assert rack.commands(rack.a) == ["refresh"], "a cancelled reboot was sent"
    assert len(results(page)) == 1
    assert (rack.master.node(rack.a) or {})["state"] == "online"

    # A task asks too, naming task and node, and its output shows once it ran.
    click(page, '[data-action="task:hello"]')
    wait_until(lambda: dialog(page)["open"], 5, 0.05, "the task's confirmation open")
    assert dialog(page)["title"] == f"Run task “hello” on {rack.a}?"
    click(page, "#confirm-ok")
    wait_until(
        lambda: [r["status"] for r in results(page)] == ["ok", "ok"], 20, 0.1, "the task answered"
    )
    assert "hello from the task" in results(page)[0]["text"]
    assert rack.commands(rack.a) == ["run", "refresh"]
    screenshot(page, "dashboard-actions-node.png")

    # A node that does not allow reboot shows no reboot button.
    page.evaluate(f"location.hash = '#/node/{rack.b}'")
    wait_until(lambda: buttons(page) == ["Refresh", "Ping"], 10, 0.1, f"{rack.b}'s buttons")
    assert results(page) == [], "another node's results must not show"


def test_send_to_a_tag_lists_a_row_per_node_with_the_offline_one_failing(
    rack: Rack, page_factory: Any
) -> None:
    rack.nodes[rack.c].stop()
    wait_until(
        lambda: (rack.master.node(rack.c) or {}).get("state") == "offline",
        15,
        0.1,
        f"{rack.c} offline",
    )
    page = page_factory(f"{rack.master.api}/#/?tag=rack1")
    wait_until(
        lambda: page.evaluate(
            "!document.querySelector('#send-box').hidden"
            " && document.querySelector('#send-nodes').textContent.includes('offline')"
        ),
        15,
        0.1,
        "the send box with the tag's nodes",
    )
    assert page.evaluate("document.querySelector('#send-tag').value") == "rack1"
    assert page.evaluate("document.querySelector('#send-nodes').textContent") == (
        f"3 nodes: {rack.a}, {rack.b}, {rack.c} (1 offline)"
    )
    options = texts(page, "#send-command option")
    assert options == ["Refresh", "Ping", "Run hello", "Reboot"]

    # A reboot of the tag asks first, naming the tag and its nodes; Cancel sends nothing.
    page.evaluate(
        "(() => { document.querySelector('#send-box').open = true;"
        " document.querySelector('#send-command').value = 'reboot';"
        " document.querySelector('#send-form').requestSubmit(); })()"
    )
    wait_until(lambda: dialog(page)["open"], 5, 0.05, "the confirmation open")
    assert dialog(page)["title"] == "Reboot on every node tagged rack1?"
    assert page.evaluate("document.querySelector('#confirm-text').textContent") == (
        f"Nodes tagged rack1: {rack.a}, {rack.b}, {rack.c}."
    )
    click(page, "#confirm-cancel")
    wait_until(lambda: not dialog(page)["open"], 5, 0.05, "the confirmation closed")
    assert rack.commands(rack.a) == []
    assert page.evaluate("document.querySelector('#send-result').hidden")

    page.evaluate(
        "(() => { document.querySelector('#send-command').value = 'ping';"
        " document.querySelector('#send-form').requestSubmit(); })()"
    )
    rows_js = (
        "[...document.querySelectorAll('#send-rows tr')].map(tr =>"
        " ({node: tr.dataset.rowNode, status: tr.dataset.status, text: tr.textContent}))"
    )
    wait_until(lambda: len(page.evaluate(rows_js)) == 3, 20, 0.1, "a row per node")
    rows = page.evaluate(rows_js)
    assert [(r["node"], r["status"]) for r in rows] == [
        (rack.a, "ok"),
        (rack.b, "ok"),
        (rack.c, "refused"),
    ]
    assert "agent_version" in rows[0]["text"]
    assert f"node '{rack.c}' is offline" in rows[2]["text"]
    summary = page.evaluate("document.querySelector('#send-summary').textContent")
    assert "ping to rack1" in summary
    assert "2 of 3 nodes ok" in summary
    assert rack.commands(rack.a) == ["ping"]
    assert rack.commands(rack.b) == ["ping"]
    screenshot(page, "dashboard-actions-tag.png")


def test_a_master_with_a_token_offers_a_login_instead_of_buttons_that_fail(
    broker: MosquittoBroker, tmp_path: Path, page_factory: Any
) -> None:
    # On localhost with an api_token, looking needs no login but writing does.
    guarded = start_rack(broker, tmp_path / "guarded", ("a",), {"CLUSTER_API_TOKEN": TOKEN})
    try:
        page = page_factory(f"{guarded.master.api}/#/node/{guarded.a}")
        wait_until(
            lambda: page.evaluate("document.querySelector('#node-model')?.textContent"),
            15,
            0.1,
            "the node page",
        )
        assert buttons(page) == []
        assert page.evaluate("document.querySelector('#login-link')?.getAttribute('href')") == (
            "/login"
        )
    finally:
        stop_rack(guarded)


def test_a_rolling_task_from_the_overview_stops_at_the_node_without_it(
    rack: Rack, page_factory: Any
) -> None:
    # Only node a has the task: a runs it and sends metrics again, b cannot, c is left alone.
    page = page_factory(f"{rack.master.api}/#/?tag=rack1")
    wait_until(
        lambda: page.evaluate("document.querySelector('#send-box')?.hidden === false"),
        15,
        0.1,
        "the send box",
    )
    page.evaluate(
        "(() => { document.querySelector('#send-box').open = true;"
        " const select = document.querySelector('#send-command');"
        " select.value = 'ping'; select.dispatchEvent(new Event('change')); })()"
    )
    assert page.evaluate("document.querySelector('#send-rolling-label').hidden")  # no waves
    page.evaluate(
        "(() => { const select = document.querySelector('#send-command');"
        " select.value = 'task:hello'; select.dispatchEvent(new Event('change'));"
        " document.querySelector('#send-rolling').checked = true;"
        " document.querySelector('#send-form').requestSubmit(); })()"
    )
    wait_until(lambda: dialog(page)["open"], 5, 0.05, "the confirmation open")
    assert dialog(page)["title"] == "Run task “hello” on every node tagged rack1, one at a time?"
    click(page, "#confirm-ok")
    summary_js = "document.querySelector('#send-summary').textContent"
    wait_until(lambda: "stopped" in page.evaluate(summary_js), 60, 0.2, "the roll's end")
    rows = page.evaluate(
        "[...document.querySelectorAll('#send-rows tr')].map(tr =>"
        " ({node: tr.dataset.rowNode, status: tr.dataset.status, text: tr.textContent}))"
    )
    assert [(r["node"], r["status"]) for r in rows] == [
        (rack.a, "ok"),
        (rack.b, "error"),
        (rack.c, "skipped"),
    ]
    assert "did not accept run" in rows[1]["text"]
    assert "left alone" in rows[2]["text"]
    assert "the roll stopped before its turn" in rows[2]["text"]
    assert page.evaluate(summary_js) == "Rolling task hello of rack1 stopped: 1 of 3 done"
    log = page.evaluate("document.querySelector('#roll-log').textContent")
    assert f"{rack.a}: back, sending metrics" in log
    assert rack.commands(rack.a) == ["run"]
    assert rack.commands(rack.c) == []
    screenshot(page, "dashboard-rolling-task.png")
