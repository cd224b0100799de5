"""The node and the master read settings the same way: flags, layers, errors and passwords."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster_protocol.config import SettingsError
from cluster_protocol.settings import specs
from master_service.cli import main as master_main
from master_service.settings import MasterSettings, parse_settings
from node_publisher.cli import main as node_main
from node_publisher.settings import PublisherSettings, add_settings_arguments, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = {"HOME": "/home/pi"}
Load = Callable[[list[str], dict[str, str]], Any]


def load_node(argv: list[str], environ: dict[str, str]) -> PublisherSettings:
    return load_settings(["--node-id", "n1", *argv], {**BASE, **environ})


def load_master(argv: list[str], environ: dict[str, str]) -> MasterSettings:
    return parse_settings(argv, environ)


SIDES = pytest.mark.parametrize("load", [load_node, load_master], ids=["node", "master"])

# A valid value, different from the default, for every flag of either program.
FLAG_SAMPLES: dict[str, tuple[str, Any]] = {
    "node_id": ("pi-07", "pi-07"),
    "state_dir": ("/tmp/elsewhere", Path("/tmp/elsewhere")),
    "broker": ("mqtts://lab:8884", "mqtts://lab:8884"),
    "interval": ("2.5", 2.5),
    "prefix": ("lab", "lab"),
    "keepalive": ("12", 12),
    "spool_max": ("99", 99),
    "password_file": ("PASSWORD_FILE", "PASSWORD_FILE"),
    "db_password_file": ("PASSWORD_FILE", "PASSWORD_FILE"),
    "ca_file": ("CA_FILE", "CA_FILE"),
    "temperature_sensor": ("none", "none"),
    "vcgencmd": ("/opt/vc/bin/vcgencmd", "/opt/vc/bin/vcgencmd"),
    "log_level": ("debug", "DEBUG"),
    "allow_reboot": ("true", True),
    "allow_shutdown": ("yes", True),
    "reboot_command": ("sudo systemctl reboot", ("sudo", "systemctl", "reboot")),
    "tags": ("rack1,poe", ("rack1", "poe")),
    "shutdown_command": ("/sbin/halt -p", ("/sbin/halt", "-p")),
    "db": ("/tmp/m.db", "/tmp/m.db"),
    "http": ("127.0.0.1:9090", "127.0.0.1:9090"),
    "client_id": ("master-2", "master-2"),
    "session_expiry": ("3600", 3600),
    "stale_factor": ("4.5", 4.5),
    "history_raw_days": ("3", 3.0),
    "history_rollup_days": ("30", 30.0),
    "ha_discovery": ("false", False),
    "ha_prefix": ("ha", "ha"),
    "ha_per_entity": ("on", True),
    "ingest_client": ("MQTT5", "mqtt5"),
    "require_login": ("on", True),
    "several_masters": ("yes", True),
    "member_timeout": ("12", 12.0),
}
# Flags valid only beside another setting: what each needs with it.
FLAG_NEEDS: dict[str, list[str]] = {"several_masters": ["--db", "postgresql://pi@db/picluster"]}


@pytest.mark.parametrize(
    ("settings_class", "load", "file_only"),
    [(PublisherSettings, load_node, {"tasks"}), (MasterSettings, load_master, {"alerts"})],
    ids=["node", "master"],
)
def test_every_key_but_secrets_has_a_flag_that_sets_it(
    settings_class: type, load: Load, file_only: set[str], tmp_path: Path
) -> None:
    declared = specs(settings_class)
    secrets = {spec.name for spec in declared if spec.secret}
    flagged = {spec.name: spec.flag_name for spec in declared if spec.flag_name}
    assert set(flagged) == {spec.name for spec in declared} - secrets - file_only
    assert "password" in secrets  # passwords never go on a command line (ps shows them)
    files = {"PASSWORD_FILE": tmp_path / "pw", "CA_FILE": tmp_path / "ca.pem"}
    for path in files.values():
        path.write_text("x\n")
    for name, flag in flagged.items():
        raw, expected = FLAG_SAMPLES[name]
        expected = str(files[raw]) if raw in files else expected
        settings = load([str(flag), str(files.get(raw, raw)), *FLAG_NEEDS.get(name, [])], {})
        assert getattr(settings, name) == expected, flag


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--no-ha-discovery"], False),
        (["--ha-discovery", "false"], False),
        (["--ha-discovery"], True),
    ],
)
def test_boolean_flags_take_a_value_or_none_and_have_a_no_form(
    argv: list[str], expected: bool
) -> None:
    assert parse_settings(argv, {"CLUSTER_HA_DISCOVERY": "0"}).ha_discovery is expected
    node_argv = [arg.replace("ha-discovery", "allow-reboot") for arg in argv]
    assert load_node(node_argv, {"CLUSTER_ALLOW_REBOOT": "1"}).allow_reboot is expected


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (lambda a: node_main(a, BASE), ["run", "--password", "x"]),
        (master_main, ["run", "--password", "x"]),
        (master_main, ["run", "--api-token", "x"]),
    ],
    ids=["node-password", "master-password", "master-api-token"],
)
def test_secrets_have_no_flag_not_even_abbreviated(
    main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err


@SIDES
def test_precedence_is_defaults_then_file_then_environment_then_flags(
    load: Load, tmp_path: Path
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('prefix = "file"\nkeepalive = 11\nlog_level = "WARNING"\n')
    assert load([], {}).log_level == "INFO"  # the default
    environ = {"CLUSTER_CONFIG": str(config), "CLUSTER_KEEPALIVE": "12", "CLUSTER_PREFIX": "env"}
    settings = load(["--prefix", "flag"], environ)
    assert settings.log_level == "WARNING"  # file over default
    assert settings.keepalive == 12  # environment over file
    assert settings.prefix == "flag"  # flag over environment
    assert load(["--config", str(config)], {}).keepalive == 11  # --config works as well


MISTAKES = [
    (["--keepalive", "0"], {}, ""),
    (["--keepalive", "1.5"], {}, ""),
    ([], {"CLUSTER_KEEPALIVE": "soon"}, ""),
    ([], {}, 'keepalive = "thirty"'),
    ([], {}, "keepalive = inf"),
    (["--prefix", "a/b"], {}, ""),
    ([], {"CLUSTER_PREFIX": ""}, 'prefix = ""'),
    (["--broker", "http://x"], {}, ""),
    (["--log-level", "chatty"], {}, ""),
    (["--ca-file", "/nonexistent/ca.pem"], {}, ""),
    (["--password-file", "/nonexistent/pw"], {}, ""),
    ([], {}, 'password = "hunter2"'),
    ([], {}, "colour = 3"),
    ([], {}, "not toml ["),
]


@pytest.mark.parametrize(("argv", "environ", "toml"), MISTAKES)
def test_the_same_mistake_reads_the_same_on_both_sides(
    argv: list[str], environ: dict[str, str], toml: str, tmp_path: Path
) -> None:
    if toml:
        config = tmp_path / "settings.toml"
        config.write_text(toml + "\n")
        environ = {**environ, "CLUSTER_CONFIG": str(config)}
    messages = []
    for load in (load_node, load_master):
        with pytest.raises(SettingsError) as raised:
            load(argv, environ)
        messages.append(str(raised.value))
    # Unknown keys list each program's own keys; everything before that list must match.
    node_text, master_text = (re.sub(r"\(known: .*\)", "(known: ...)", m) for m in messages)
    assert node_text == master_text
    assert re.match(r"^[a-z_]+: \S", node_text)


def test_a_bad_setting_exits_2_with_the_same_line_from_both_programs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert node_main(["run", "--node-id", "n1", "--keepalive", "-1"], BASE) == 2
    node_err = capsys.readouterr().err
    assert master_main(["run", "--keepalive", "-1"]) == 2
    master_err = capsys.readouterr().err
    assert node_err == "cluster-node: bad setting keepalive: must be greater than 0, got -1\n"
    assert master_err == node_err.replace("cluster-node", "cluster-master")


@SIDES
def test_a_password_in_the_broker_url_is_taken_out_of_it(load: Load) -> None:
    settings = load(["--broker", "mqtt://someone:s3cr%40t@host:1884"], {})
    assert settings.broker == "mqtt://someone@host:1884"
    assert settings.password == "s3cr@t"
    assert "s3cr" not in repr(settings)
    address = settings.address if isinstance(settings, PublisherSettings) else None
    address = address or settings.broker_address
    assert (address.username, address.password, address.port) == ("someone", "s3cr@t", 1884)
    assert "s3cr" not in address.redacted()
    assert "s3cr" not in repr(address)


@SIDES
def test_the_url_password_wins_over_the_environment_and_a_file(load: Load, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    environ = {"CLUSTER_PASSWORD": "from-env"}
    assert load(["--password-file", str(secret)], {}).password == "from-file"
    assert load(["--password-file", str(secret)], environ).password == "from-env"
    from_url = load(["--broker", "mqtt://u:from-url@h", "--password-file", "/nope"], environ)
    assert from_url.password == "from-url"  # the file is not even read


def test_settings_made_in_code_have_the_url_password_taken_out_too() -> None:
    master = MasterSettings(broker="mqtt://picluster-master:pw1@h:1883", db=":memory:")
    assert (master.broker, master.password) == ("mqtt://picluster-master@h:1883", "pw1")
    assert "pw1" not in repr(master)
    with pytest.raises(SettingsError, match=r"^keepalive: must be a whole number, got str"):
        MasterSettings(keepalive="30")  # type: ignore[arg-type]


def test_the_readme_lists_every_setting_of_both_programs() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    node_part, master_part = reference.split("### `cluster-master`", 1)
    for settings_class, text in ((PublisherSettings, node_part), (MasterSettings, master_part)):
        for spec in specs(settings_class):
            assert f"`{spec.name}`" in text, spec.name


def test_the_node_flags_are_those_of_every_subcommand() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert "--no-allow-reboot" in flags
    assert not any(flag.startswith("--password") and flag != "--password-file" for flag in flags)
