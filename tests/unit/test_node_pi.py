"""Pi specifics against three real boards' files (copied into tests/fixtures/node)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster_protocol import MACHINE_DETAILS_FIELDS, validate_payload
from node_publisher import pi
from node_publisher.machine_info import MachineInfo, MachinePaths, details_changed
from tests.unit.test_node_collectors import FakePs, Temp

BOARDS = Path(__file__).resolve().parent.parent / "fixtures" / "node"


@pytest.mark.parametrize(
    ("board", "model", "cpu"),
    [
        ("pi-zero-w-armv6", "Raspberry Pi Zero W Rev 1.1", "ARM1176"),
        ("pi4-arm64", "Raspberry Pi 4 Model B Rev 1.4", "Cortex-A72"),
        ("pi5-arm64", "Raspberry Pi 5 Model B Rev 1.0", "Cortex-A76"),
    ],
)
def test_model_and_cpu_of_each_board(board, model, cpu):
    assert pi.read_model(BOARDS / board / "device-tree_model") == model
    assert pi.read_cpu_name(BOARDS / board / "proc_cpuinfo") == cpu


@pytest.mark.parametrize(
    ("part", "name"),
    [
        ("0xb76", "ARM1176"),
        ("0xc07", "Cortex-A7"),
        ("0xd03", "Cortex-A53"),
        ("0xd08", "Cortex-A72"),
    ],
)
def test_cpu_part_table(part, name):
    assert pi.cpu_name(f"CPU implementer\t: 0x41\nCPU part\t: {part}\n") == name


def test_x86_cpu_uses_model_name_and_nothing_readable_gives_none(tmp_path):
    assert pi.cpu_name("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5\n") == (
        "Intel(R) Core(TM) i5"
    )
    assert pi.read_cpu_name(tmp_path / "missing") is None
    assert pi.read_model(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("board", "celsius"), [("pi-zero-w-armv6", 38.459), ("pi4-arm64", 47.236), ("pi5-arm64", 52.35)]
)
def test_temperature_from_the_thermal_zone_when_psutil_has_none(board, celsius):
    ps = FakePs()
    ps.temps = {}
    zone = BOARDS / board / "thermal_zone0_temp"
    assert pi.read_temperature(ps, "auto", zone) == pytest.approx(celsius)


def test_temperature_sensor_choice():
    ps = FakePs()
    ps.temps = {"acpitz": [Temp("", 30.0)], "k10temp": [Temp("Tctl", 55.5)]}
    missing = Path("/nonexistent")
    assert pi.read_temperature(ps, "auto", missing) == 55.5  # k10temp before acpitz
    assert pi.read_temperature(ps, "acpitz", missing) == 30.0
    assert pi.read_temperature(ps, "nvme", missing) is None
    assert pi.read_temperature(ps, "none", missing) is None
    assert pi.read_temperature(ps, str(BOARDS / "pi4-arm64" / "thermal_zone0_temp")) == 47.236


def test_no_sensors_anywhere_is_none_not_an_error():
    class Bare:
        pass

    assert pi.read_temperature(Bare(), "auto", Path("/nonexistent")) is None


def test_throttled_decodes_the_pi4_fixture():
    text = (BOARDS / "pi4-arm64" / "vcgencmd_get_throttled").read_text()
    assert pi.decode_throttled(text) == {
        "raw": "0x50005",
        "under_voltage": True,
        "freq_capped": False,
        "throttled": True,
        "soft_temp_limit": False,
        "under_voltage_occurred": True,
        "freq_capped_occurred": False,
        "throttled_occurred": True,
        "soft_temp_limit_occurred": False,
    }


@pytest.mark.parametrize("board", ["pi-zero-w-armv6", "pi5-arm64"])
def test_throttled_all_clear(board):
    decoded = pi.decode_throttled((BOARDS / board / "vcgencmd_get_throttled").read_text())
    assert decoded is not None
    assert decoded["raw"] == "0x0"
    assert not any(value for key, value in decoded.items() if key != "raw")


def test_throttle_reader_runs_vcgencmd_and_handles_missing_or_denied(caplog):
    calls: list[tuple[str, ...]] = []

    def ok(argv):
        calls.append(tuple(argv))
        return "throttled=0x50005\n"

    assert pi.ThrottleReader("/opt/vc/bin/vcgencmd", ok).read()["under_voltage"] is True  # type: ignore[index]
    assert calls == [("/opt/vc/bin/vcgencmd", "get_throttled")]

    missing_calls = []

    def missing(argv):
        missing_calls.append(argv)
        raise FileNotFoundError(argv[0])

    reader = pi.ThrottleReader("vcgencmd", missing)
    assert reader.read() is None
    assert reader.read() is None
    assert len(missing_calls) == 1  # not spawned again every sample

    def denied(argv):
        raise subprocess.CalledProcessError(255, argv, "VCHI initialization failed")

    denied_reader = pi.ThrottleReader("vcgencmd", denied)
    assert denied_reader.read() is None
    assert denied_reader.read() is None
    assert caplog.text.count("cannot read throttling") == 1


def test_throttle_reader_with_a_real_missing_binary():
    assert pi.ThrottleReader("/nonexistent/vcgencmd").read() is None


def test_machine_details_of_a_pi4(tmp_path):
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    paths = MachinePaths(
        os_release=os_release,
        cpuinfo=BOARDS / "pi4-arm64" / "proc_cpuinfo",
        device_tree_model=BOARDS / "pi4-arm64" / "device-tree_model",
    )
    details = MachineInfo(FakePs(), 10.0, paths).details(12.5)
    # `commands` and `tasks` come from the agent's command settings, not the machine.
    assert set(details) == set(MACHINE_DETAILS_FIELDS) - {"commands", "tasks"}
    validate_payload("machine_details", details)
    assert details["cpu"] == "Cortex-A72"
    assert details["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert details["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert details["ram"] == 4_000_000_000
    assert details["cpu_cores"] == 4
    assert details["cpu_percent_used"] == 12.5
    assert details["disk_total_bytes"] == 32_000_000_000
    assert details["ip_addresses"] == ["192.168.1.20"]  # no loopback, no link-local
    assert details["interval_s"] == 10.0


def test_only_changes_beyond_cpu_use_trigger_a_republish():
    info = MachineInfo(FakePs(), 10.0, MachinePaths(os_release=Path("/nonexistent")))
    first = info.details(1.0)
    assert details_changed(None, first)
    assert not details_changed(first, info.details(99.0))
    assert details_changed(first, {**first, "ip_addresses": ["10.0.0.9"]})
