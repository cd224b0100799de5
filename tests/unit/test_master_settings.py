from __future__ import annotations

import pytest

from cluster_protocol.config import SettingsError
from master_service.settings import parse_settings
from master_service.storage.database import Database, Engine


def test_defaults_are_usable():
    settings = parse_settings([], {})
    assert settings.http == "127.0.0.1:8080"
    assert settings.client_id == "picluster-master"
    assert settings.http_is_loopback


def test_precedence_is_defaults_then_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "master.toml"
    config.write_text('broker = "mqtt://file:1883"\nprefix = "fromfile"\nkeepalive = 11\n')
    environ = {
        "CLUSTER_CONFIG": str(config),
        "CLUSTER_PREFIX": "fromenv",
        "CLUSTER_KEEPALIVE": "12",
    }
    settings = parse_settings(["--prefix", "fromflag"], environ)
    assert settings.broker == "mqtt://file:1883"  # file beats default
    assert settings.keepalive == 12  # environment beats file
    assert settings.prefix == "fromflag"  # flag beats environment


@pytest.mark.parametrize(
    ("argv", "environ", "field"),
    [
        (["--broker", "http://x"], {}, "broker"),
        (["--http", "nowhere"], {}, "http"),
        (["--prefix", "a/b"], {}, "prefix"),
        ([], {"CLUSTER_KEEPALIVE": "soon"}, "keepalive"),
        ([], {"CLUSTER_HA_DISCOVERY": "perhaps"}, "ha_discovery"),
        (["--log-level", "LOUD"], {}, "log_level"),
    ],
)
def test_bad_values_name_the_field(argv, environ, field):
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, environ)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_wrong_type_in_the_file_names_the_field(tmp_path):
    config = tmp_path / "master.toml"
    config.write_text('keepalive = "thirty"\n')
    with pytest.raises(SettingsError, match=r"^keepalive: must be a whole number, got str"):
        parse_settings(["--config", str(config)], {})


def test_unknown_file_key_and_password_in_file_are_refused(tmp_path):
    config = tmp_path / "master.toml"
    config.write_text('brokr = "mqtt://x"\n')
    with pytest.raises(SettingsError, match=r"^brokr: unknown key"):
        parse_settings(["--config", str(config)], {})
    config.write_text('password = "hunter2"\n')
    with pytest.raises(SettingsError, match=r"^password: keep passwords out"):
        parse_settings(["--config", str(config)], {})


def test_password_comes_from_a_file_and_never_shows_in_repr(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = parse_settings(
        ["--broker", "mqtt://picluster-master@h", "--password-file", str(secret)], {}
    )
    assert settings.broker_address.password == "s3cret"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in settings.broker_address.redacted()


def test_api_beyond_localhost_needs_a_token():
    settings = parse_settings(["--http", "0.0.0.0:9000"], {"CLUSTER_API_TOKEN": "t"})
    assert not settings.http_is_loopback
    assert settings.http_port == 9000


def test_cli_stops_before_connecting_with_a_message_naming_the_field(capsys):
    from master_service.cli import main

    assert main(["run", "--broker", "mqtt://127.0.0.1:9", "--http", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cluster-master: bad setting http: ")
    assert "Traceback" not in err


def test_missing_ca_file_is_a_settings_error(tmp_path):
    with pytest.raises(SettingsError, match=r"^ca_file: "):
        parse_settings(["--ca-file", str(tmp_path / "nope.crt")], {})


def test_cli_reports_an_unusable_database_without_a_traceback(tmp_path, capsys):
    from master_service.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    db = blocker / "master.db"  # a path under a regular file cannot be created
    assert main(["run", "--broker", "mqtt://127.0.0.1:9", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cluster-master: cannot open the database {db}")
    assert "Traceback" not in err


# (--db value, the start of the complaint): refused before anything is opened or created.
REFUSED_DATABASES = [
    ("sqlite:///var/lib/picluster/hunter2.db", "a sqlite:// URL is not a database"),
    ("mysql://admin@db.example/hunter2", "a mysql:// URL is not a database"),
    ("postgresql://admin:hunter2@db.example:5432/picluster", "holds a password"),
    ("postgresql://admin@db.example:5432", "must name the database"),
    ("postgresql://admin@db.example:port/hunter2", "is not a valid postgresql:// URL"),
]


@pytest.mark.parametrize(("url", "complaint"), REFUSED_DATABASES)
def test_an_unusable_database_url_is_refused_and_no_file_is_made(
    url, complaint, tmp_path, capsys, monkeypatch
):
    # A URL used to become a SQLite file named after the scheme ("postgresql:") in the cwd.
    from master_service.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--broker", "mqtt://127.0.0.1:9", "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cluster-master: bad setting db: {complaint}")
    assert "hunter2" not in err  # the URL may hold a password: not repeated
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "complaint"), REFUSED_DATABASES)
def test_the_users_command_refuses_an_unusable_database_url_too(
    url, complaint, tmp_path, capsys, monkeypatch
):
    from master_service.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLUSTER_DB", url)
    assert main(["users", "list"]) == 3
    err = capsys.readouterr().err
    assert f"bad setting db: {complaint}" in err
    assert "hunter2" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_url_is_taken_and_its_password_comes_from_its_own_settings(tmp_path):
    secret = tmp_path / "db.password"
    secret.write_text("s3cret\n")
    url = "postgresql://picluster@db.example:5432/picluster"
    settings = parse_settings(["--db", url], {"CLUSTER_DB_PASSWORD_FILE": str(secret)})
    assert settings.database == Database(url, "s3cret")
    assert settings.database.engine is Engine.POSTGRESQL
    assert "s3cret" not in repr(settings)


def test_the_database_password_is_refused_in_the_config_file(tmp_path):
    config = tmp_path / "master.toml"
    config.write_text('db = "postgresql://picluster@db.example/picluster"\ndb_password = "x"\n')
    with pytest.raises(SettingsError, match="db_password: keep passwords out of config files"):
        parse_settings(["--config", str(config)], {})


@pytest.mark.parametrize(
    ("http", "extra", "required"),
    [
        ("127.0.0.1:8080", [], False),
        ("127.0.0.2:8080", [], False),  # all of 127.0.0.0/8 is this machine
        ("[::1]:8080", [], False),
        ("localhost:8080", [], False),
        ("0.0.0.0:8080", [], True),
        ("192.168.1.10:8080", [], True),
        ("pi-01.local:8080", [], True),  # a name may resolve to any address
        ("127.0.0.1:8080", ["--require-login"], True),  # behind a reverse proxy
    ],
)
def test_a_login_is_required_beyond_loopback_or_when_asked(http, extra, required):
    settings = parse_settings(["--http", http, *extra], {})
    assert settings.login_required is required


PG = "postgresql://picluster@db.lan:5432/picluster"


@pytest.mark.parametrize(
    ("argv", "needs"),
    [
        (["--several-masters"], "needs db = postgresql://"),
        (["--several-masters", "--db", PG, "--ingest-client", "paho"], "needs ingest_client"),
        (["--several-masters", "--db", PG, "--member-timeout", "0"], None),
    ],
)
def test_several_masters_needs_postgresql_and_the_mqtt5_client(argv, needs):
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, {})
    expected = "member_timeout" if needs is None else "several_masters"
    assert caught.value.field == expected
    if needs is not None:
        assert needs in str(caught.value)


def test_several_masters_give_each_head_its_own_default_client_id(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "head 2")
    settings = parse_settings(["--several-masters", "--db", PG], {})
    # One session per head: the same id on two heads would make the broker drop one for the other.
    assert settings.client_id == "picluster-master-head-2"
    chosen = parse_settings(["--several-masters", "--db", PG, "--client-id", "east"], {})
    assert chosen.client_id == "east"
    assert parse_settings(["--db", PG], {}).client_id == "picluster-master"
