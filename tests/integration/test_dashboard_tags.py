"""Tags in the dashboard, in real headless Chromium: chips on cards and the node page, and the
overview's tag filter (kept in the address, `#/?tag=rack1`)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

VIRTUAL_TIME_MS = 5000
OFFLINE_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


class Page(HTMLParser):
    """Cards with their tag chips, the filter's buttons, and the node page's chips."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cards: dict[str, list[str]] = {}
        self.buttons: dict[str, bool] = {}  # tag -> pressed
        self.node_tags: list[str] = []
        self.master_chips: list[str] = []
        self.hidden: set[str] = set()  # ids of hidden elements
        self.texts: dict[str, str] = {}
        self._card: str | None = None
        self._into: tuple[str, str] | None = None  # (where, tag or id) while reading text
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id") and "hidden" in a:
            self.hidden.add(str(a["id"]))
        if tag == "article" and a.get("data-node"):
            self._card = str(a["data-node"])
            self.cards[self._card] = []
        classes = (a.get("class") or "").split()
        if tag == "button" and "tag" in classes:
            self.buttons[str(a.get("data-tag"))] = a.get("aria-pressed") == "true"
        elif tag == "li" and "tag" in classes:
            self._into = ("chip", "master" if "master" in classes else "own")
        elif tag == "ul" and a.get("id") == "node-tags":
            self._card = "#node"
        elif tag == "p" and a.get("id") == "filtered-empty":
            self._into = ("text", "filtered-empty")

    def handle_endtag(self, tag: str) -> None:
        # A card ends with its article; the node page's chips with their list.
        if tag == "article" or (tag == "ul" and self._card == "#node"):
            self._card = None
        if tag in ("li", "p"):
            self._into = None

    def handle_data(self, data: str) -> None:
        if self._into is None:
            return
        where, what = self._into
        if where == "text":
            self.texts[what] = self.texts.get(what, "") + data
            return
        if what == "master":
            self.master_chips.append(data)
        if self._card == "#node":
            self.node_tags.append(data)
        elif self._card is not None:
            self.cards[self._card].append(data)


REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"


def dump_dom(binary: str, profile: Path, url: str, *extra: str) -> str:
    args = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--host-resolver-rules={OFFLINE_RULES}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}", *(extra or ("--dump-dom",)), url,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@dataclass
class TaggedCluster:
    master: RunningMaster
    nodes: list[Service]
    a: str
    b: str


@pytest.fixture
def tagged_cluster(broker: MosquittoBroker, tmp_path: Path) -> Iterator[TaggedCluster]:
    prefix = f"dt{uuid.uuid4().hex[:8]}"
    a, b = f"{prefix}-a", f"{prefix}-b"
    master = start_master(broker.url, tmp_path, "--prefix", prefix, "--no-ha-discovery")
    nodes = [
        start_node(broker.url, tmp_path, a, "--prefix", prefix, "--tags", "rack1,poe"),
        start_node(broker.url, tmp_path, b, "--prefix", prefix, "--tag", "rack2"),
    ]
    try:
        wait_until(
            lambda: all((master.node(n) or {}).get("own_tags") for n in (a, b)),
            30,
            0.2,
            "both nodes' tags at the master",
        )
        put = urllib.request.Request(f"{master.api}/api/nodes/{b}/tags/gpu", method="PUT")
        with urllib.request.urlopen(put, timeout=35) as response:  # no token: loopback
            assert response.status == 204
        yield TaggedCluster(master, nodes, a, b)
    finally:
        for node in nodes:
            node.stop()
        master.stop()


def test_cards_show_tags_and_the_filter_keeps_the_nodes_with_them(
    tagged_cluster: TaggedCluster, tmp_path: Path
) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run the README's test command, which installs it")
    c = tagged_cluster
    page = Page(dump_dom(binary, tmp_path / "p1", c.master.api + "/"))
    assert page.cards == {c.a: ["poe", "rack1"], c.b: ["gpu", "rack2"]}
    assert page.master_chips == ["gpu"]  # marked as set on the master
    assert page.buttons == {"gpu": False, "poe": False, "rack1": False, "rack2": False}

    page = Page(dump_dom(binary, tmp_path / "p2", c.master.api + "/#/?tag=rack1"))
    assert list(page.cards) == [c.a]
    assert page.buttons["rack1"] is True
    assert "tag-clear" not in page.hidden

    page = Page(dump_dom(binary, tmp_path / "p3", c.master.api + "/#/?tag=rack1&tag=gpu"))
    assert page.cards == {}
    assert page.texts["filtered-empty"] == "No node has the tags gpu and rack1."

    page = Page(dump_dom(binary, tmp_path / "p4", f"{c.master.api}/#/node/{c.b}"))
    assert page.node_tags == ["gpu", "rack2"]

    # For a person to look at: the filter pressed, one card left.
    shot = ARTIFACTS / "dashboard-tags.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    url = c.master.api + "/#/?tag=rack2"
    dump_dom(binary, tmp_path / "p5", url, "--window-size=1100,700", f"--screenshot={shot}")
    assert shot.is_file()
