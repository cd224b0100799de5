"""Static machine details: the `machine_details` payload (original five keys plus v1 extras)."""

from __future__ import annotations

import ipaddress
import logging
import platform
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster_protocol.payloads import MachineDetails
from node_publisher import __version__, pi
from node_publisher.collectors import PsutilLike

logger = logging.getLogger(__name__)

OS_RELEASE: Final = Path("/etc/os-release")
# The only detail that changes every sample; a change elsewhere triggers a re-publish.
VOLATILE_DETAILS: Final = frozenset({"cpu_percent_used"})


@dataclass(frozen=True, slots=True)
class MachinePaths:
    """Where the static details are read from (tests point these at fixtures)."""

    os_release: Path = OS_RELEASE
    cpuinfo: Path = pi.PROC_CPUINFO
    device_tree_model: Path = pi.DEVICE_TREE_MODEL
    root_mount: str = "/"


def read_os_name(path: Path = OS_RELEASE) -> str:
    """`PRETTY_NAME` from os-release, else the platform's system name."""
    text = pi.read_text(path) or ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PRETTY_NAME":
            return value.strip().strip("\"'")
    return platform.system() or "unknown"


def ip_addresses(ps: PsutilLike) -> list[str]:
    """Every non-loopback, non-link-local IPv4/IPv6 address of the machine, sorted."""
    found: set[str] = set()
    for entries in ps.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = str(entry.address).split("%", 1)[0]  # drop an IPv6 zone index
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not (address.is_loopback or address.is_link_local):
                found.add(str(address))
    return sorted(found)


class MachineInfo:
    """Builds `machine_details`; reads the truly static parts once."""

    def __init__(
        self,
        ps: PsutilLike,
        interval_s: float,
        paths: MachinePaths | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        self._ps = ps
        self._tags = list(tags)  # the node's own tags (settings), checked there
        self._paths = paths or MachinePaths()
        self._interval_s = interval_s
        self._os = read_os_name(self._paths.os_release)
        self._cpu = (
            pi.read_cpu_name(self._paths.cpuinfo)
            or platform.processor()
            or platform.machine()
            or "unknown"
        )
        self._model = pi.read_model(self._paths.device_tree_model)

    def details(self, cpu_percent_used: float) -> MachineDetails:
        """The full `machine_details` payload, with the CPU use of the latest sample."""
        ps = self._ps
        try:
            disk_total = int(ps.disk_usage(self._paths.root_mount).total)
        except OSError:
            disk_total = 0
        return MachineDetails(
            hostname=socket.gethostname(),
            cpu_percent_used=cpu_percent_used,
            ram=int(ps.virtual_memory().total),
            cpu=self._cpu,
            cpu_cores=int(ps.cpu_count(logical=True) or 1),
            os=self._os,
            kernel=platform.release(),
            arch=platform.machine(),
            model=self._model,
            boot_time=float(ps.boot_time()),
            disk_total_bytes=disk_total,
            ip_addresses=ip_addresses(ps),
            agent_version=__version__,
            interval_s=self._interval_s,
            tags=list(self._tags),
        )


def details_changed(old: MachineDetails | None, new: MachineDetails) -> bool:
    """True when anything but the CPU use differs (the trigger for a re-publish)."""
    if old is None:
        return True
    keys = (set(old) | set(new)) - VOLATILE_DETAILS
    return any(old.get(key) != new.get(key) for key in keys)
