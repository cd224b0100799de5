"""The systemd units in deploy/: accepted by systemd-analyze, hardened, reading /etc/picluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BIN, ETC = "/opt/picluster/venv/bin", "/etc/picluster"
UNITS = {
    "picluster-node.service": f"{BIN}/cluster-node run --config {ETC}/node.toml",
    "picluster-master.service": f"{BIN}/cluster-master run --config {ETC}/master.toml",
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "StateDirectory": "picluster",
    "User": "picluster",
    "Restart": "always",
}


def unit_options(path: Path) -> dict[str, str]:
    """A unit file's Key=value lines (last one wins), comments left out."""
    options: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip()
    return options


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_runs_the_entry_point_with_its_config(unit: str) -> None:
    options = unit_options(REPO_ROOT / "deploy" / unit)
    assert options["ExecStart"] == UNITS[unit]
    assert options["After"].startswith("network-online.target")
    assert options["Wants"] == "network-online.target"
    assert options["WantedBy"] == "multi-user.target"
    assert "RestartSec" in options


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_hardened(unit: str) -> None:
    options = unit_options(REPO_ROOT / "deploy" / unit)
    assert {key: options.get(key) for key in HARDENING} == HARDENING
    assert options["CapabilityBoundingSet"] == ""


def test_node_unit_can_read_pi_temperature() -> None:
    assert (
        unit_options(REPO_ROOT / "deploy" / "picluster-node.service")["SupplementaryGroups"]
        == "video"
    )


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_verify_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd)")
    # verify fails on an ExecStart binary that does not exist, and /opt/picluster exists only
    # after an install: check a copy whose ExecStart names /bin/true, everything else as shipped.
    text = (REPO_ROOT / "deploy" / unit).read_text()
    copy = tmp_path / unit
    copy.write_text(text.replace(UNITS[unit].split()[0], "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # Unknown or misspelt options are only warnings: any output is a finding.
    assert result.stderr.strip() == "", result.stderr


def test_verify_would_notice_a_bad_option(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    bad = tmp_path / "picluster-node.service"
    bad.write_text(
        (REPO_ROOT / "deploy" / "picluster-node.service")
        .read_text()
        .replace(UNITS["picluster-node.service"].split()[0], "/bin/true")
        .replace("Restart=always", "Restart=sometimes")
    )
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "sometimes" in result.stderr
