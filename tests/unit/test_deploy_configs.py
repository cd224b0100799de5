"""Static checks of the shipped deployment files: example TOML, broker configs, compose file."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from master_service.enrollment.installer import DEPLOY_FILES, PACKAGE_PATHS, SOURCE_PATHS
from master_service.settings import parse_settings
from node_publisher.settings import load_settings as load_node_settings
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
MOSQUITTO = REPO_ROOT / "mosquitto"
COMPOSE = REPO_ROOT / "docker-compose.yml"
NODE_KEYS = {
    "broker", "node_id", "interval", "prefix", "keepalive", "state_dir", "spool_max",
    "password_file", "ca_file", "temperature_sensor", "vcgencmd", "log_level",
}  # fmt: skip
MASTER_KEYS = {
    "broker", "db", "http", "prefix", "client_id", "password_file", "ca_file", "api_token",
    "log_level", "ha_discovery", "ha_prefix",
}  # fmt: skip
# Keys whose values are paths that differ between the Debian and the container config.
PATH_KEYS = {"pid_file", "password_file", "acl_file", "persistence_location", "log_dest"}
# Keys of the "Who may connect" section: the static password file or the dynamic security plugin.
AUTH_KEYS = {"password_file", "acl_file", "plugin", "plugin_opt_config_file"}
# Debian's docker-compose package depends on python3-yaml; the project venv has no YAML parser.
SYSTEM_PYTHON = "/usr/bin/python3"


def conf_settings(path: Path) -> dict[str, list[str]]:
    """Mosquitto config as {option: [values in order]}, comments and blank lines left out."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value)
    return settings


def test_node_example_uses_only_documented_keys_and_loads() -> None:
    example = DEPLOY / "node.toml.example"
    assert set(tomllib.loads(example.read_text())) <= NODE_KEYS
    settings = load_node_settings(["--config", str(example)], {"CLUSTER_PASSWORD": "x"})
    assert settings.node_id == "pi-01"
    assert settings.interval == 10
    assert settings.password_file == "/etc/picluster/node.password"


def test_master_example_uses_only_documented_keys_and_loads() -> None:
    example = DEPLOY / "master.toml.example"
    assert set(tomllib.loads(example.read_text())) <= MASTER_KEYS
    settings = parse_settings(["--config", str(example)], {"CLUSTER_PASSWORD": "x"})
    assert settings.http == "127.0.0.1:8080"
    assert settings.db == "/var/lib/picluster/master.db"
    assert settings.ha_discovery is True


def test_examples_keep_passwords_out_of_the_broker_url() -> None:
    for name in ("node.toml.example", "master.toml.example"):
        broker = tomllib.loads((DEPLOY / name).read_text())["broker"]
        assert ":" not in broker.split("://", 1)[1].split("@", 1)[0]


def test_docker_conf_has_the_same_settings_as_the_production_conf() -> None:
    debian, docker = (
        conf_settings(MOSQUITTO / "mosquitto.conf"),
        conf_settings(MOSQUITTO / "docker.conf"),
    )
    assert {k: v for k, v in debian.items() if k not in PATH_KEYS} == {
        k: v for k, v in docker.items() if k not in PATH_KEYS
    }
    assert docker["password_file"] == ["/mosquitto/config/passwd"]
    assert docker["acl_file"] == ["/mosquitto/config/acl"]
    assert docker["persistence_location"] == ["/mosquitto/data/"]


def test_docker_dynsec_conf_is_the_dynsec_conf_with_the_container_paths() -> None:
    dynsec = conf_settings(MOSQUITTO / "dynsec.conf")
    docker_dynsec = conf_settings(MOSQUITTO / "docker-dynsec.conf")
    docker = conf_settings(MOSQUITTO / "docker.conf")
    assert {k: v for k, v in dynsec.items() if k not in PATH_KEYS | AUTH_KEYS} == {
        k: v for k, v in docker_dynsec.items() if k not in PATH_KEYS | AUTH_KEYS
    }
    # The image's plugin path, and the plugin's JSON in the data volume (kept across starts).
    assert docker_dynsec["plugin"] == ["/usr/lib/mosquitto_dynamic_security.so"]
    assert docker_dynsec["plugin_opt_config_file"] == ["/mosquitto/data/dynamic-security.json"]
    assert "password_file" not in docker_dynsec
    assert "acl_file" not in docker_dynsec
    # Beside that, the same as the static compose config.
    assert {k: v for k, v in docker.items() if k not in AUTH_KEYS} == {
        k: v for k, v in docker_dynsec.items() if k not in AUTH_KEYS
    }


def test_production_conf_choices() -> None:
    conf = conf_settings(MOSQUITTO / "mosquitto.conf")
    assert conf["allow_anonymous"] == ["false"]
    assert conf["listener"] == ["1883"]
    assert conf["persistence"] == ["true"]
    assert conf["autosave_on_changes"] == ["false"]
    # A master outage of an hour at 1,000 nodes x one metrics per 10 s fits in the queue.
    assert int(conf["max_queued_messages"][0]) >= 1000 * 360
    assert int(conf["message_size_limit"][0]) > 64 * 1024
    text = (MOSQUITTO / "mosquitto.conf").read_text()
    assert "#listener 8883" in text
    assert "#keyfile" in text


def test_dev_conf_is_loopback_and_relative() -> None:
    conf = conf_settings(MOSQUITTO / "dev.conf")
    assert conf["listener"] == ["1883 127.0.0.1"]
    assert not conf["persistence_location"][0].startswith("/")


def load_compose() -> dict[str, Any]:
    """The compose file as data, parsed by the YAML library Debian's docker-compose brings."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: apt-get install -y docker-compose")
    result = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=COMPOSE.read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: apt-get install -y docker-compose")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env")
    for profile in ([], ["--profile", "demo"]):
        result = subprocess.run(
            ["docker-compose", *profile, "config"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_compose_services_volumes_and_health() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"mosquitto", "master", "demo-node"}
    assert services["demo-node"]["profiles"] == ["demo"]
    assert set(compose["volumes"]) >= {"mosquitto-data", "mosquitto-log", "master-data"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name

    broker = services["mosquitto"]
    assert broker["image"] == "eclipse-mosquitto:2"
    assert "mosquitto-data:/mosquitto/data" in broker["volumes"]
    assert "mosquitto-log:/mosquitto/log" in broker["volumes"]
    assert broker["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "mosquitto_sub" in broker["healthcheck"]["test"][1]

    master = services["master"]
    assert master["build"]["dockerfile"] == "deploy/Dockerfile.master"
    assert master["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert master["env_file"] == ".env"
    assert "master-data:/var/lib/picluster" in master["volumes"]
    assert master["environment"]["CLUSTER_DB"].startswith("/var/lib/picluster/")
    assert any(port.endswith(":8080") for port in master["ports"])


def test_compose_mounts_files_that_exist() -> None:
    for service in load_compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                path = REPO_ROOT / source
                assert path.exists(), source


def test_compose_commands_match_the_entry_points() -> None:
    services = load_compose()["services"]
    dockerfile = (DEPLOY / "Dockerfile.master").read_text()
    assert 'ENTRYPOINT ["cluster-master"]' in dockerfile
    assert services["master"]["command"] == ["run"]
    assert services["demo-node"]["entrypoint"] == ["cluster-node"]
    assert services["demo-node"]["command"] == ["run"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert {"cluster-master", "cluster-node"} <= set(pyproject["project"]["scripts"])
    assert services["mosquitto"]["command"] == ["sh", "/picluster/host/docker-start.sh"]
    start = (REPO_ROOT / "mosquitto" / "docker-start.sh").read_text()
    assert "HOST_DIR=${PICLUSTER_HOST_DIR:-/picluster/host}" in start
    assert "DATA_DIR=${PICLUSTER_DATA_DIR:-/mosquitto/data}" in start
    assert "AUTH=${PICLUSTER_BROKER_AUTH:-dynsec}" in start
    assert "CONF=${PICLUSTER_MOSQUITTO_CONF:-$HOST_DIR/docker-dynsec.conf}" in start
    assert "CONF=${PICLUSTER_MOSQUITTO_CONF:-$HOST_DIR/docker.conf}" in start
    assert start.count('exec mosquitto -c "$CONF"') == 2
    volumes = services["mosquitto"]["volumes"]
    assert "./mosquitto:/picluster/host:ro" in volumes
    assert "mosquitto-data:/mosquitto/data" in volumes


def test_compose_variables_are_in_the_env_example() -> None:
    env_example = (REPO_ROOT / ".env.example").read_text()
    keys = {line.split("=", 1)[0] for line in env_example.splitlines() if "=" in line}
    assert {"CLUSTER_PASSWORD", "CLUSTER_API_TOKEN", "PICLUSTER_HTTP_PORT"} <= keys
    assert "PICLUSTER_BROKER_AUTH=dynsec" in env_example.splitlines()
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_dockerfile_installs_the_master_extra_on_python_311() -> None:
    dockerfile = (DEPLOY / "Dockerfile.master").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'pip install --editable ".[master]"' in dockerfile
    assert "USER picluster" in dockerfile


def test_dockerfile_keeps_what_the_master_serves_to_new_nodes() -> None:
    """The image's master answers GET /install/...: its source tree and the node's installer."""
    dockerfile = (DEPLOY / "Dockerfile.master").read_text()
    assert "WORKDIR /opt/picluster/src" in dockerfile
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = {source for *names, _ in copies for source in names}
    assert set(SOURCE_PATHS) | set(PACKAGE_PATHS) <= sources
    assert {f"deploy/{name}" for name in DEPLOY_FILES} <= sources
    assert [copies[-1][0], copies[-1][-1]] == ["deploy/install-node.sh", "./deploy/"]
