"""Logins and roles (issue 13, item 5) on a real master: `cluster-master run` over Mosquitto.

Each test gets its own master with `--require-login` (the same rules as a master listening
beyond loopback, without opening a port to the network), users made with `cluster-master
users` as an admin on the head would, and an HTTP client that keeps cookies like a browser.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.broker import MosquittoBroker
from tests.support.logins import add_user, csrf_header, log_in, login_form, users_cli
from tests.support.processes import RunningMaster, master_database, start_master

API_TOKEN = "the-masters-admin-token"
METRICS_TOKEN = "prometheus-scrape-token"
ADMIN_PW = "correct horse battery"
VIEWER_PW = "viewer-pass-1234"
SILENCE = {"node": "pi-*", "for": "5m", "comment": "maintenance"}

MasterFactory = Callable[..., RunningMaster]


@pytest.fixture
def make_master(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MasterFactory]:
    """Start masters that require a login, with an admin `alice` and a viewer `victor`."""
    started: list[RunningMaster] = []

    def make(*extra: str, env: dict[str, str] | None = None) -> RunningMaster:
        workdir = tmp_path / f"master{len(started)}"
        database = master_database(workdir)
        db = database.target
        for name, value in database.env.items():  # for `cluster-master users` too
            monkeypatch.setenv(name, value)
        workdir.mkdir()
        add_user(db, "alice", "admin", ADMIN_PW)  # before the master: the first admin
        add_user(db, "victor", "viewer", VIEWER_PW)
        master = start_master(
            broker.url,
            workdir,
            "--require-login",
            "--no-ha-discovery",
            "--prefix", f"login{len(started)}",
            "--client-id", f"picluster-master-login{len(started)}-{tmp_path.name[-8:]}",
            *extra,
            env={"CLUSTER_API_TOKEN": API_TOKEN, **(env or {})},
            db=database,
        )  # fmt: skip
        started.append(master)
        return master

    yield make
    for master in started:
        master.stop()


def client_of(master: RunningMaster) -> httpx.Client:
    """A client that keeps cookies, like a browser, and does not follow redirects."""
    return httpx.Client(base_url=master.api, timeout=10)


def test_without_a_login_only_health_answers_and_the_dashboard_sends_to_login(
    make_master: MasterFactory,
) -> None:
    master = make_master(env={"CLUSTER_METRICS_TOKEN": METRICS_TOKEN})
    with client_of(master) as anonymous:
        for path in ("/api/nodes", "/api/cluster", "/api/alerts", "/api/catalog/metrics"):
            answer = anonymous.get(path)
            assert answer.status_code == 401, path
            assert "log in at /login" in answer.json()["detail"]
        assert anonymous.post("/api/alerts/silences", json=SILENCE).status_code == 401
        dashboard = anonymous.get("/")
        assert dashboard.status_code == 303
        assert dashboard.headers["location"] == "/login"
        assert anonymous.get("/healthz").status_code == 200  # monitoring needs no login
        assert anonymous.get("/metrics").status_code == 401  # a metrics_token is set
        scraped = anonymous.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200
        assert "# TYPE picluster_node_up gauge" in scraped.text
        # The node installer's routes stay open: a new node has no login, only its token.
        # (Refused for its unknown token, not for the missing login.)
        refused = anonymous.post("/api/enroll", json={"token": "x" * 43})
        assert refused.status_code == 403, refused.text
        assert "log in" not in refused.json()["detail"]
        assert anonymous.get("/install/node.sh").status_code == 200


def test_a_viewer_reads_everything_and_changes_nothing(make_master: MasterFactory) -> None:
    master = make_master()
    with client_of(master) as viewer:
        answer = log_in(viewer, "victor", VIEWER_PW)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        assert viewer.get("/").status_code == 200
        assert viewer.get("/api/me").json() == {
            "user": "victor",
            "role": "viewer",
            "via": "session",
            "login_required": True,
        }
        assert viewer.get("/api/nodes").status_code == 200
        assert viewer.get("/api/alerts/silences").status_code == 200
        # Even with its own CSRF token, a viewer's write is refused and changes nothing.
        refused = viewer.post("/api/alerts/silences", json=SILENCE, headers=csrf_header(viewer))
        assert refused.status_code == 403
        assert "needs the admin role; victor is a viewer" in refused.json()["detail"]
        assert viewer.get("/api/alerts/silences").json()["silences"] == []


def test_an_admin_session_writes_only_with_its_csrf_token(make_master: MasterFactory) -> None:
    master = make_master()
    with client_of(master) as admin:
        assert log_in(admin, "alice", ADMIN_PW).status_code == 303
        # The cookie alone is what a forged cross-site form would carry: refused.
        forged = admin.post("/api/alerts/silences", json=SILENCE)
        assert forged.status_code == 403
        assert "X-CSRF-Token" in forged.json()["detail"]
        wrong = admin.post("/api/alerts/silences", json=SILENCE, headers={"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        assert admin.get("/api/alerts/silences").json()["silences"] == []
        made = admin.post("/api/alerts/silences", json=SILENCE, headers=csrf_header(admin))
        assert made.status_code == 201, made.text
        assert [s["comment"] for s in admin.get("/api/alerts/silences").json()["silences"]] == [
            "maintenance"
        ]
    assert "missing or wrong X-CSRF-Token" in master.log()


def test_session_cookies_are_httponly_strict_and_secure_behind_tls(
    make_master: MasterFactory,
) -> None:
    master = make_master()
    with client_of(master) as plain:
        cookies = log_in(plain, "alice", ADMIN_PW).headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("picluster_session="))
    csrf = next(c for c in cookies if c.startswith("picluster_csrf="))
    assert "HttpOnly" in session
    assert "SameSite=strict" in session or "SameSite=Strict" in session
    assert "Secure" not in session  # plain HTTP: a Secure cookie would never come back
    assert "HttpOnly" not in csrf  # the dashboard's script reads it to send it back
    # Behind a TLS proxy on this host (uvicorn trusts 127.0.0.1's X-Forwarded-Proto).
    with client_of(master) as proxied:
        form = login_form(proxied)
        answer = proxied.post(
            "/login",
            data={"name": "alice", "password": ADMIN_PW, "csrf": form},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert answer.status_code == 303
        secure = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("picluster_session=")
        )
        assert "Secure" in secure


def test_the_login_form_refuses_cross_site_posts(make_master: MasterFactory) -> None:
    master = make_master()
    with client_of(master) as browser:
        # A form on another site cannot read our page's CSRF value nor set our cookie.
        forged = browser.post("/login", data={"name": "alice", "password": ADMIN_PW, "csrf": "x"})
        assert forged.status_code == 403
        assert "picluster_session" not in browser.cookies
        csrf = login_form(browser)
        other_site = browser.post(
            "/login",
            data={"name": "alice", "password": ADMIN_PW, "csrf": csrf},
            headers={"Origin": "http://evil.example"},
        )
        assert other_site.status_code == 403
        assert "picluster_session" not in browser.cookies
        # An open redirect after login would be a phishing tool: only local paths.
        csrf = login_form(browser)
        away = browser.post(
            "/login",
            data={"name": "alice", "password": ADMIN_PW, "csrf": csrf, "next": "//evil.example/"},
        )
        assert away.headers["location"] == "/"


def test_failed_logins_are_rate_limited_and_logged_with_the_address(
    make_master: MasterFactory,
) -> None:
    master = make_master()
    with client_of(master) as guesser:
        for attempt in range(5):
            wrong = log_in(guesser, "alice", f"guess-{attempt}")
            assert wrong.status_code == 401
            assert "Wrong user name or password." in wrong.text
        # Over the limit, even the right password waits: a guesser learns nothing more.
        blocked = log_in(guesser, "alice", ADMIN_PW)
        assert blocked.status_code == 429
        assert int(blocked.headers["Retry-After"]) > 0
        assert "picluster_session" not in guesser.cookies
    log = master.log()
    assert log.count("failed login for 'alice' from 127.0.0.1") == 5
    assert "login for 'alice' from 127.0.0.1 refused: too many failed tries" in log
    assert ADMIN_PW not in log  # passwords are never logged
    assert "guess-0" not in log


def test_user_tokens_the_api_token_and_removal(make_master: MasterFactory) -> None:
    master = make_master()
    made = users_cli(master.db, "token", "victor", "--label", "grafana")
    assert made.returncode == 0, made.stderr
    viewer_token = made.stdout.strip()
    listed = users_cli(master.db, "list")
    assert "grafana" in listed.stdout
    assert viewer_token not in listed.stdout

    with client_of(master) as script:
        as_viewer = {"Authorization": f"Bearer {viewer_token}"}
        assert script.get("/api/nodes", headers=as_viewer).status_code == 200
        refused = script.post("/api/alerts/silences", json=SILENCE, headers=as_viewer)
        assert refused.status_code == 403
        # The master's api_token is an admin token; a bearer token needs no CSRF header.
        as_admin = {"Authorization": f"Bearer {API_TOKEN}"}
        silenced = script.post("/api/alerts/silences", json=SILENCE, headers=as_admin)
        assert silenced.status_code == 201, silenced.text
        assert script.get("/api/me", headers=as_admin).json()["role"] == "admin"
        unknown = script.get("/api/nodes", headers={"Authorization": "Bearer not-a-token"})
        assert unknown.status_code == 401

    with client_of(master) as browser:
        assert log_in(browser, "victor", VIEWER_PW).status_code == 303
        assert browser.get("/api/nodes").status_code == 200
        removed = users_cli(master.db, "remove", "victor")
        assert removed.returncode == 0, removed.stderr
        # At once, without a restart: the session and the token stop working.
        assert browser.get("/api/nodes").status_code == 401
        assert browser.get("/").status_code == 303
    with client_of(master) as script:
        answer = script.get("/api/nodes", headers={"Authorization": f"Bearer {viewer_token}"})
        assert answer.status_code == 401


def test_logout_ends_the_session_and_a_new_password_ends_the_others(
    make_master: MasterFactory,
) -> None:
    master = make_master()
    with client_of(master) as laptop, client_of(master) as phone:
        assert log_in(laptop, "alice", ADMIN_PW).status_code == 303
        assert log_in(phone, "alice", ADMIN_PW).status_code == 303
        stolen = dict(laptop.cookies)
        out = laptop.post("/logout", data={"csrf": laptop.cookies["picluster_csrf"]})
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        with client_of(master) as thief:
            thief.cookies.update(stolen)
            assert thief.get("/api/nodes").status_code == 401  # the old cookie is dead
        assert phone.get("/api/nodes").status_code == 200
        changed = users_cli(master.db, "passwd", "alice", password="a brand new passphrase")
        assert changed.returncode == 0, changed.stderr
        assert phone.get("/api/nodes").status_code == 401
        assert log_in(phone, "alice", "a brand new passphrase").status_code == 303


def test_the_users_command_refuses_bad_input_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = master_database(tmp_path)
    db = database.target
    for name, value in database.env.items():
        monkeypatch.setenv(name, value)
    short = users_cli(db, "add", "bob", "--role", "viewer", password="short")
    assert short.returncode == 2
    assert "at least 8 characters" in short.stderr
    bad_name = users_cli(db, "add", "-x y", "--role", "viewer", password="long enough pw")
    assert bad_name.returncode == 2
    assert "is not a user name" in bad_name.stderr
    add_user(db, "bob", "viewer", "long enough pw")
    again = users_cli(db, "add", "bob", "--role", "admin", password="long enough pw")
    assert again.returncode == 2
    assert "a user 'bob' exists already" in again.stderr
    assert users_cli(db, "remove", "nobody").returncode == 1
    role = users_cli(db, "role", "bob", "admin")
    assert role.returncode == 0, role.stderr
    [bob] = [line for line in users_cli(db, "list").stdout.splitlines() if line.startswith("bob")]
    assert bob.split()[1] == "admin"


def test_a_login_form_larger_than_any_login_is_refused_before_it_is_read(
    make_master: MasterFactory,
) -> None:
    master = make_master()
    with client_of(master) as browser:
        csrf = login_form(browser)
        huge = browser.post(
            "/login", data={"name": "alice", "password": "x" * 100_000, "csrf": csrf}
        )
        assert huge.status_code == 413
        assert log_in(browser, "alice", ADMIN_PW).status_code == 303  # the master is fine


def test_an_open_local_master_refuses_writes_from_another_sites_page(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    # Localhost, no token, no login: writes are open, but not to a page of another site.
    master = start_master(broker.url, tmp_path, "--no-ha-discovery", "--prefix", "openlocal")
    try:
        with client_of(master) as browser:
            forged = browser.post(
                "/api/alerts/silences", json=SILENCE, headers={"Origin": "http://evil.example"}
            )
            assert forged.status_code == 403
            host = master.api.removeprefix("http://")
            own = browser.post("/api/alerts/silences", json=SILENCE, headers={"Origin": master.api})
            assert own.status_code == 201, (host, own.text)
            assert len(browser.get("/api/alerts/silences").json()["silences"]) == 1
    finally:
        master.stop()


@pytest.mark.sqlite_file("the master's files on the head, and a link planted as its -wal file")
def test_run_as_root_the_users_command_becomes_the_masters_user() -> None:
    # On a head, `sudo cluster-master users ...` must leave the master's files its own and
    # never write through a link the master's user planted. (Under /tmp: pytest's own
    # directories are root's alone, and the master's user must reach its files.)
    assert os.geteuid() == 0, "this test needs root, as CI runs it"
    nobody = pwd.getpwnam("nobody")
    outside = Path(tempfile.mkdtemp(prefix="picluster-root-", dir="/tmp"))
    try:
        outside.chmod(0o755)
        home = outside / "picluster"
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        db = home / "master.db"
        add_user(db, "alice", "admin", ADMIN_PW)
        for path in home.iterdir():
            assert path.stat().st_uid == nobody.pw_uid, path
        precious = outside / "shadow"
        precious.write_text("root's secret\n")
        precious.chmod(0o644)
        (home / "master.db-wal").unlink(missing_ok=True)
        (home / "master.db-wal").symlink_to(precious)
        users_cli(db, "add", "bob", "--role", "viewer", password="long enough pw")
        assert precious.read_text() == "root's secret\n"
        assert precious.stat().st_uid == 0
    finally:
        shutil.rmtree(outside)
