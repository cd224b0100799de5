"""Settings: defaults < TOML file < environment < flags, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster_protocol.config import SettingsError
from node_publisher.cli import main
from node_publisher.settings import load_settings

BASE = {"HOME": "/home/pi"}


def test_defaults():
    settings = load_settings(["--node-id", "n1"], BASE)
    assert settings.broker == "mqtt://127.0.0.1:1883"
    assert settings.interval == 10.0
    assert settings.prefix == "cluster"
    assert settings.keepalive == 30
    assert settings.spool_max == 8640
    assert settings.temperature_sensor == "auto"
    assert settings.vcgencmd == "vcgencmd"
    assert settings.log_level == "INFO"
    assert settings.password is None


def test_state_dir_default_follows_xdg_for_users_and_var_lib_for_root(monkeypatch):
    monkeypatch.setattr("node_publisher.settings.os.geteuid", lambda: 1000)
    assert load_settings(["--node-id", "n1"], BASE).state_dir == Path(
        "/home/pi/.local/state/picluster"
    )
    xdg = load_settings(["--node-id", "n1"], {**BASE, "XDG_STATE_HOME": "/s"})
    assert xdg.state_dir == Path("/s/picluster")
    monkeypatch.setattr("node_publisher.settings.os.geteuid", lambda: 0)
    assert load_settings(["--node-id", "n1"], BASE).state_dir == Path("/var/lib/picluster")


def test_node_id_defaults_to_the_cleaned_hostname(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "Pi.Rack_2")
    assert load_settings([], BASE).node_id == "pi-rack_2"


def test_precedence_file_then_env_then_flags(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('interval = 5\nprefix = "lab"\nkeepalive = 12\nnode_id = "from-file"\n')
    env = {
        **BASE,
        "CLUSTER_CONFIG": str(config),
        "CLUSTER_INTERVAL": "2.5",
        "CLUSTER_KEEPALIVE": "9",
    }
    settings = load_settings(["--keepalive", "4"], env)
    assert settings.prefix == "lab"  # file over default
    assert settings.node_id == "from-file"
    assert settings.interval == 2.5  # env over file
    assert settings.keepalive == 4  # flag over env
    assert load_settings(["--config", str(config)], BASE).interval == 5.0  # --config works too


def test_password_from_url_env_or_file_never_shown(tmp_path):
    from_url = load_settings(["--node-id", "n1", "--broker", "mqtt://n1:s3cret@host:1884"], BASE)
    assert from_url.address.username == "n1"
    assert from_url.address.password == "s3cret"
    assert "s3cret" not in repr(from_url)
    assert "s3cret" not in from_url.broker
    from_env = load_settings(["--node-id", "n1"], {**BASE, "CLUSTER_PASSWORD": "e"})
    assert (from_env.address.username, from_env.address.password) == ("n1", "e")  # user = node
    secret = tmp_path / "pw"
    secret.write_text("f1le\n")
    from_file = load_settings(["--node-id", "n1", "--password-file", str(secret)], BASE)
    assert from_file.address.password == "f1le"


def test_there_is_no_password_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--password", "x"], BASE)
    assert exited.value.code == 2
    assert "unrecognized arguments: --password" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "field"),
    [
        (["--interval", "0"], {}, "interval"),
        (["--interval", "soon"], {}, "interval"),
        ([], {"CLUSTER_INTERVAL": "-1"}, "interval"),
        ([], {"CLUSTER_KEEPALIVE": "1.5"}, "keepalive"),
        (["--spool-max", "0"], {}, "spool_max"),
        (["--broker", "http://x"], {}, "broker"),
        (["--node-id", "_master"], {}, "node_id"),
        (["--node-id", "Bad Id"], {}, "node_id"),
        (["--prefix", "a/b"], {}, "prefix"),
        (["--log-level", "chatty"], {}, "log_level"),
        (["--ca-file", "/nonexistent/ca.pem"], {}, "ca_file"),
        (["--password-file", "/nonexistent/pw"], {}, "password_file"),
        (["--config", "/nonexistent/node.toml"], {}, "config"),
    ],
)
def test_bad_values_name_the_field(argv, env, field):
    args = ["--node-id", "n1", *argv] if "--node-id" not in argv else argv
    with pytest.raises(SettingsError) as raised:
        load_settings(args, {**BASE, **env})
    assert raised.value.field == field
    assert str(raised.value).startswith(field)


def test_bad_file_values_name_the_field(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('interval = "fast"\n')
    with pytest.raises(SettingsError, match=r"^interval"):
        load_settings(["--config", str(config), "--node-id", "n1"], BASE)
    config.write_text("colour = 3\n")
    with pytest.raises(SettingsError, match=r"^colour"):
        load_settings(["--config", str(config), "--node-id", "n1"], BASE)


def test_cli_reports_a_bad_setting_and_exits_2_before_connecting(capsys):
    assert main(["run", "--node-id", "n1", "--interval", "-3"], BASE) == 2
    err = capsys.readouterr().err
    assert "interval" in err
    assert "Traceback" not in err
