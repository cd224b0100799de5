"""The dashboard in a real headless Chromium against a running master (issue 4, item 3).

`running_master_url` (tests/integration/conftest.py) is `cluster-master run` fed by three
`cluster-node run` processes over a real Mosquitto. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import NODE_KEEPALIVE_S, Cluster
from tests.support.broker import MosquittoBroker
from tests.support.processes import start_master, start_node
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
STATE_LABELS = {"online": "Online", "stale": "Stale", "offline": "Offline", "unknown": "Unknown"}
# Enough virtual time for the first poll, the sparkline and chart fetches, and a second poll.
VIRTUAL_TIME_MS = 6000
CHROMIUM_TIMEOUT_S = 60
# Every host name except loopback fails to resolve: the page must need nothing from the internet.
OFFLINE_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


@dataclass
class Chromium:
    """Runs headless Chromium once per call with a throwaway profile."""

    binary: str
    profile: Path

    def run(self, url: str, *extra: str, size: str = "1280,900") -> str:
        """Load url, let its scripts run for VIRTUAL_TIME_MS, return stdout."""
        args = [
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={self.profile}", f"--window-size={size}",
            f"--host-resolver-rules={OFFLINE_RULES}", f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *extra, url,
        ]  # fmt: skip
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False
        )
        assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
        return done.stdout

    def dump_dom(self, url: str) -> str:
        """The page's DOM after its scripts ran."""
        return self.run(url, "--dump-dom")

    def screenshot(self, url: str, path: Path, size: str = "1280,900") -> Path:
        """Save a PNG of the page and check that one was written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.run(url, f"--screenshot={path}", size=size)
        assert path.is_file(), f"chromium wrote no screenshot at {path}"
        assert path.stat().st_size > 10_000, f"the screenshot at {path} looks blank"
        return path


@pytest.fixture
def chromium(chromium_binary: str, tmp_path: Path) -> Chromium:
    """A Chromium runner with its own profile directory."""
    return Chromium(chromium_binary, tmp_path / "profile")


@dataclass
class Card:
    """What a node card shows, read from the DOM."""

    state: str | None = None
    state_text: str = ""
    spark_points: int = 0
    text: list[str] = field(default_factory=list)


class DashboardDom(HTMLParser):
    """Collects node cards (data-node), chart point counts (data-chart) and stats (data-stat)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "wbr", "source"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cards: dict[str, Card] = {}
        self.charts: dict[str, int] = {}
        self.stats: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self._stack: list[tuple[str, str | None, str]] = []  # (tag, card node, capture role)
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        node = a.get("data-node") or (self._stack[-1][1] if self._stack else None)
        role = self._stack[-1][2] if self._stack else ""
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if "data-node" in a and node is not None:
            self.cards[node] = Card(state=a.get("data-state"))
        if node is not None and "state" in classes:
            role = "state"
        if "data-stat" in a:
            role = f"stat:{a['data-stat']}"
        if node is not None and "sparkline" in classes:
            self.cards[node].spark_points = int(a.get("data-points") or 0)
        if "data-chart" in a:
            self.charts[a["data-chart"] or ""] = int(a.get("data-points") or 0)
        if tag not in self.VOID:
            self._stack.append((tag, node, role))

    def handle_endtag(self, tag: str) -> None:
        # Pop to the matching tag; the DOM Chromium serialises is well formed.
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._stack or not data.strip():
            return
        _, node, role = self._stack[-1]
        if role.startswith("stat:"):
            self.stats[role[5:]] = self.stats.get(role[5:], "") + data.strip()
        if node is not None:
            card = self.cards[node]
            card.text.append(data.strip())
            if role == "state":
                card.state_text += data.strip()


def get_text(url: str) -> str:
    """GET a document from the master as text."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def get_json(url: str) -> Any:
    """GET a JSON document from the master."""
    return json.loads(get_text(url))


@pytest.fixture
def api_nodes(running_master_url: str) -> dict[str, str]:
    """Node -> state per the API, once every node is online and has CPU history to draw."""

    def ready() -> dict[str, str] | None:
        views = get_json(f"{running_master_url}/api/nodes")["nodes"]
        if not views or any(v["state"] != "online" for v in views):
            return None
        for v in views:
            history = get_json(
                f"{running_master_url}/api/nodes/{v['node']}/history?metric=cpu_percent"
            )
            if not any(p[1] is not None for p in history["points"]):
                return None
        return {v["node"]: v["state"] for v in views}

    result: dict[str, str] = wait_until(
        ready, timeout_s=30, interval_s=0.2, message="every node online with CPU history"
    )
    return result


def test_overview_shows_every_node_with_its_state_and_a_cpu_sparkline(
    chromium: Chromium, running_master_url: str, api_nodes: dict[str, str]
) -> None:
    dom = DashboardDom(chromium.dump_dom(f"{running_master_url}/"))

    assert dom.body.get("data-connection") == "ok", "the page says it lost the master"
    assert set(dom.cards) == set(api_nodes)
    for node, state in api_nodes.items():
        card = dom.cards[node]
        assert card.state == state, f"{node}: card says {card.state}, API says {state}"
        assert card.state_text == STATE_LABELS[state], f"{node}: state shown as text"
        assert card.spark_points > 0, f"{node}: the CPU sparkline has no points"
        assert re.search(r"\d+(\.\d)? %", " ".join(card.text)), f"{node}: no CPU/memory %"
    assert dom.stats["nodes_total"] == str(len(api_nodes))
    assert dom.stats["online"] == str(list(api_nodes.values()).count("online"))

    chromium.screenshot(f"{running_master_url}/", ARTIFACTS / "dashboard.png")
    chromium.screenshot(f"{running_master_url}/", ARTIFACTS / "dashboard-phone.png", size="390,844")


def test_node_page_charts_history(
    chromium: Chromium, running_master_url: str, api_nodes: dict[str, str]
) -> None:
    node = sorted(api_nodes)[0]
    url = f"{running_master_url}/#/node/{node}"

    dom = DashboardDom(chromium.dump_dom(url))

    assert dom.charts["cpu"] > 0, "the CPU chart has no points"
    assert dom.charts["memory"] > 0, "the memory chart has no points"
    catalog = get_json(f"{running_master_url}/api/catalog/metrics")["metrics"]
    titles = {m["dashboard"]["chart"] for m in catalog if m["history"] and m["dashboard"]}
    titles.discard(None)
    # One chart per chart title of the master's metric catalog: the page lists none itself.
    assert set(dom.charts) == {re.sub(r"[^a-z0-9]+", "-", t.lower()) for t in titles}
    assert {"cpu", "memory", "temperature", "network"} <= set(dom.charts)
    chromium.screenshot(url, ARTIFACTS / "dashboard-node.png", size="1280,1300")


def test_the_alerts_page_opens_and_the_page_stays_whole_with_or_without_alerts(
    chromium: Chromium, running_master_url: str, api_nodes: dict[str, str]
) -> None:
    html = chromium.dump_dom(f"{running_master_url}/#/alerts")
    dom = DashboardDom(html)

    assert dom.body.get("data-connection") == "ok", "the page says it lost the master"
    assert re.search(r'<section id="alerts-view"(?![^>]*\bhidden)[^>]*>', html), "no Alerts page"
    assert re.search(r'<section id="overview-view"[^>]*\bhidden', html), "overview still shown"
    assert re.search(r'<a href="#/alerts" data-page="alerts" aria-current="page"', html)
    try:
        firing = list(get_json(f"{running_master_url}/api/alerts")["alerts"])
    except urllib.error.HTTPError as error:  # a master without the alert API: 404
        code, firing = error.code, []
    else:
        code = 200
    if code == 404:
        assert "This master reports no alerts (HTTP 404" in html
    banner_hidden = re.search(r'<section id="alerts-banner"[^>]*\bhidden', html) is not None
    assert banner_hidden == (not firing), "the banner must list exactly what fires"


def test_dashboard_assets_reference_nothing_outside_the_master(running_master_url: str) -> None:
    # A Pi cluster often has no internet: no CDN fonts, scripts or styles.
    page = get_text(f"{running_master_url}/")
    pending = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert "/static/app.js" in pending
    texts = {"/": page}
    while pending:  # follow ES module imports too
        path = pending.pop()
        if path not in texts:
            texts[path] = get_text(f"{running_master_url}{path}")
            pending += re.findall(r'from "(/static/[^"]+)"', texts[path])
    assert len(texts) >= 5, f"expected the page, its stylesheet and scripts: {sorted(texts)}"
    external = {
        url
        for text in texts.values()
        for url in re.findall(r"https?://[^\s\"')]+", text)
        if not url.startswith("http://www.w3.org/")  # the SVG namespace, never fetched
    }
    assert not external, f"the dashboard refers to outside URLs: {sorted(external)}"


def _fd_above_4(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class LivePage:
    """One Chromium page kept open, driven over the DevTools protocol on a pipe (fds 3 and 4).

    `--dump-dom` only shows a page once; watching a page change while the cluster changes
    needs a page that stays open. The pipe transport needs no extra library.
    """

    def __init__(self, binary: str, profile: Path, url: str) -> None:
        to_chromium_r, self._to_chromium = os.pipe()
        self._from_chromium, from_chromium_w = os.pipe()
        # Above 9 (bash reads multi-digit fds; dash does not), so the redirections below
        # cannot overwrite one end with the other.
        to_chromium_r = _fd_above_4(to_chromium_r)
        from_chromium_w = _fd_above_4(from_chromium_w)
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1280,900",
            f"--host-resolver-rules={OFFLINE_RULES}", "--remote-debugging-pipe", url,
        ]  # fmt: skip
        # Chromium reads commands on fd 3 and writes answers on fd 4.
        redirect = f'exec "$0" "$@" 3<&{to_chromium_r} 4>&{from_chromium_w}'
        self.log_path = profile.parent / "chromium-live.log"
        profile.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", redirect, binary, *args],
                pass_fds=(to_chromium_r, from_chromium_w),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        os.close(to_chromium_r)
        os.close(from_chromium_w)
        self._buffer = b""
        self._next_id = 0
        pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        assert pages, "chromium opened no page"
        attached = self.send(
            "Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True}
        )
        self._session = attached["sessionId"]

    def send(self, method: str, params: dict[str, Any] | None = None, **extra: Any) -> Any:
        """Send one command and return its result (events in between are skipped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}, **extra}
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chromium, 65536)
                assert chunk, f"chromium closed the DevTools pipe: {self.log()}"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]

    def log(self) -> str:
        """The end of Chromium's output, for failure messages."""
        return self.log_path.read_text(errors="replace")[-3000:]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            sessionId=self._session,
        )
        return result["result"].get("value")

    def close(self) -> None:
        """End Chromium by its PID and close the pipe."""
        self.process.kill()
        self.process.wait(timeout=10)
        os.close(self._to_chromium)
        os.close(self._from_chromium)


def card_state(page: LivePage, node: str) -> str | None:
    """The state a node's card shows on the overview, read from the live page."""
    state: str | None = page.evaluate(
        f"document.querySelector('[data-node={json.dumps(node)}]')?.dataset.state ?? null"
    )
    return state


def test_a_killed_node_turns_offline_on_the_open_page_within_the_keepalive_bound(
    chromium_binary: str, make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster("dashkill", ["kill-01", "kill-02"])
    page = LivePage(chromium_binary, tmp_path / "profile", f"{cluster.url}/")
    try:
        wait_until(
            lambda: card_state(page, "kill-01") == "online" == card_state(page, "kill-02"),
            timeout_s=15,
            interval_s=0.1,
            message="both cards online on the page",
        )

        cluster.nodes["kill-01"].process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        bound_s = NODE_KEEPALIVE_S * 1.5 + 5
        wait_until(
            lambda: card_state(page, "kill-01") == "offline",
            timeout_s=bound_s,
            interval_s=0.1,
            message=f"kill-01 shown offline within {bound_s} s of kill -9",
        )
        shown_after_s = time.monotonic() - killed_at

        assert card_state(page, "kill-02") == "online", "the other node must stay online"
        assert page.evaluate("document.body.dataset.connection") == "ok"
        assert shown_after_s <= bound_s
    finally:
        page.close()


# A rule every sample breaks, at once: an alert that fires as soon as the node reports.
ALWAYS_FIRING_CONFIG = """
[[alerts.rules]]
name = "always"
metric = "cpu_percent"
above = -1
for = 0
severity = "critical"
"""


@pytest.fixture
def alerting_master(broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A master whose one node fires the `always` alert: (master URL, node id)."""
    prefix, node_id = "dashalert", "alert-01"
    config = tmp_path / "master.toml"
    config.write_text(ALWAYS_FIRING_CONFIG)
    master = start_master(
        broker.url,
        tmp_path,
        "--prefix", prefix,
        "--client-id", f"picluster-master-{prefix}",
        "--no-ha-discovery",
        "--config", str(config),
    )  # fmt: skip
    node = start_node(broker.url, tmp_path, node_id, "--prefix", prefix)
    try:
        wait_until(
            lambda: (
                [(a["node"], a["rule"]) for a in master.get("/api/alerts")["alerts"]]
                == [(node_id, "always")]
            ),
            timeout_s=20,
            interval_s=0.2,
            message="the always rule firing on the node",
        )
        yield master.api, node_id
    finally:
        node.stop()
        master.stop()


def texts(page: LivePage, selector: str) -> list[str]:
    """The text of every element matching a CSS selector on the live page."""
    found: list[str] = page.evaluate(
        f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)"
    )
    return found


def test_a_firing_alert_shows_everywhere_and_can_be_silenced_from_the_page(
    chromium_binary: str, alerting_master: tuple[str, str], tmp_path: Path
) -> None:
    url, node = alerting_master
    page = LivePage(chromium_binary, tmp_path / "profile", f"{url}/")
    try:
        wait_until(
            lambda: any(f"always on {node}" in t for t in texts(page, "#alerts-banner-list li")),
            timeout_s=15,
            interval_s=0.1,
            message="the banner lists the firing alert",
        )
        assert texts(page, "#alerts-banner .sev") == ["Critical"]
        assert texts(page, f'[data-node="{node}"] .alert-badge') == ["Alert: always"]
        assert texts(page, "#alerts-count") == ["1"]

        page.evaluate("location.hash = '#/alerts'")
        wait_until(
            lambda: (
                len(texts(page, "#firing-rows tr")) == 1
                and "Firing" in " ".join(texts(page, "#history-rows tr"))
            ),
            timeout_s=10,
            interval_s=0.1,
            message="the Alerts page lists the alert and its history",
        )
        assert f"{node}" in texts(page, "#firing-rows tr")[0]

        # Silence it through the form, as a user would; then remove the silence again.
        page.evaluate(
            "(() => { const f = document.querySelector('#silence-form');"
            f" f.elements.node.value = {json.dumps(node)}; f.elements.rule.value = 'always';"
            " f.elements.for.value = '1h'; f.elements.comment.value = 'checked by the test';"
            " f.requestSubmit(); })()"
        )
        error = "document.querySelector('#silence-error').textContent"
        wait_until(
            lambda: (
                page.evaluate(error)
                or any("checked by the test" in t for t in texts(page, "#silence-rows tr"))
            ),
            timeout_s=10,
            interval_s=0.1,
            message="the new silence (or an error) on the page",
        )
        assert page.evaluate(error) == "", "the page could not add the silence"
        [silence] = get_json(f"{url}/api/alerts/silences")["silences"]
        assert (silence["node"], silence["rule"]) == (node, "always")
        wait_until(
            lambda: "silenced" in " ".join(texts(page, "#firing-rows .tag")),
            timeout_s=10,
            interval_s=0.1,
            message="the firing alert marked silenced",
        )

        page.evaluate("document.querySelector('button[data-remove]').click()")
        wait_until(
            lambda: texts(page, "#silence-rows tr") == [],
            timeout_s=10,
            interval_s=0.1,
            message="the silence gone from the page",
        )
        assert get_json(f"{url}/api/alerts/silences")["silences"] == []
        assert page.evaluate("document.body.dataset.connection") == "ok"
    finally:
        page.close()
