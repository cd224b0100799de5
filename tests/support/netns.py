"""A small LAN of Linux network namespaces on one bridge, whose cables a test can cut.

The switch (a bridge) lives in a namespace of its own, each host in another, joined by a veth
pair: the "cable", whose switch end is the host's port. The test process itself gets one more
port (an address on the LAN in the root namespace), so it can reach the hosts' services as a
laptop on that LAN would. Needs root and iproute2 (`ip`, `bridge`); a machine without them
fails with a message naming what is missing. Every name is unique per LAN, and `close()`
removes it all (processes left in its namespaces included), whatever state a test left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support.broker import BrokerError, wait_for_port
from tests.support.dynsec_broker import DynsecBroker
from tests.support.processes import Service

logger = logging.getLogger(__name__)

SUBNETS = ipaddress.IPv4Network("198.18.0.0/16")  # RFC 2544's benchmarking range: no one's LAN
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
BRIDGE = "br0"
HOST_IFACE = "eth0"  # every host's side of its cable
MAX_HOST_NAME = 12  # its port is "p-<name>", and interface names end at 15 characters


class NetnsUnavailableError(RuntimeError):
    """This machine cannot build the LAN: not root, iproute2 missing, or no namespaces."""


def tool(name: str, package: str = "iproute2") -> str:
    """The path of a system tool, or NetnsUnavailableError naming the Debian package to install."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in SBIN if (Path(d) / name).is_file()), None
    )
    if found is None:
        raise NetnsUnavailableError(
            f"`{name}` is not installed: the network-path tests need Debian's {package} package"
        )
    return found


def _run(*argv: str) -> str:
    """Run one command; its stdout, or NetnsUnavailableError with what it said."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsUnavailableError(
            f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One machine on the LAN: a namespace, its address and its port on the switch."""

    name: str
    netns: str
    address: str
    port: str

    def argv(self, *command: str) -> list[str]:
        """`command` run inside this host's namespace (`ip netns exec`, which execs it)."""
        return [tool("ip"), "netns", "exec", self.netns, *command]

    def spawn(
        self, command: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Service:
        """Start `command` on this host, its output to `log_path`; stopped by its PID."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as handle:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                self.argv(*command),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        return Service(process, log_path)


@dataclass
class Lan:
    """A bridge in its own namespace, hosts plugged into it, and the test process's own port."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    network: ipaddress.IPv4Network | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _started: bool = False

    @property
    def switch(self) -> str:
        """The switch's namespace."""
        return f"pcl{self.tag}-sw"

    @property
    def uplink(self) -> str:
        """The test process's port on the LAN (an interface in the root namespace)."""
        return f"pcl{self.tag}"

    def _address(self, index: int) -> str:
        assert self.network is not None
        return str(self.network.network_address + index)

    def start(self) -> Lan:
        """Check the tools, pick a free /24, make the switch and plug the test process in."""
        if os.geteuid() != 0:
            raise NetnsUnavailableError("network namespaces need root (CI runs the tests as root)")
        tool("ip")
        tool("bridge")
        self.network = self._free_subnet()
        self._started = True
        try:
            self._add_namespace(self.switch)
            self._ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            self._ip("-n", self.switch, "link", "set", BRIDGE, "up")
            self._ip(
                "link", "add", self.uplink, "type", "veth", "peer", "name", "uplink", "netns",
                self.switch,
            )  # fmt: skip
            self._ip("-n", self.switch, "link", "set", "uplink", "master", BRIDGE, "up")
            address = f"{self._address(254)}/{self.network.prefixlen}"
            self._ip("addr", "add", address, "dev", self.uplink)
            self._ip("link", "set", self.uplink, "up")
        except BaseException:
            self.close()
            raise
        logger.info("LAN %s on %s (switch namespace %s)", self.tag, self.network, self.switch)
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace `name` with its cable plugged into the switch, addressed and up."""
        assert self.network is not None, "start() the LAN first"
        if len(name) > MAX_HOST_NAME or name in self.hosts:
            raise ValueError(f"host name {name!r}: at most {MAX_HOST_NAME} characters, unique")
        host = Host(
            name=name,
            netns=f"pcl{self.tag}-{name}",
            address=self._address(len(self.hosts) + 1),
            port=f"p-{name}",
        )
        self._add_namespace(host.netns)
        self._ip("-n", host.netns, "link", "set", "lo", "up")
        self._ip(
            "-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name",
            HOST_IFACE, "netns", host.netns,
        )  # fmt: skip
        self._ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE, "up")
        address = f"{host.address}/{self.network.prefixlen}"
        self._ip("-n", host.netns, "addr", "add", address, "dev", HOST_IFACE)
        self._ip("-n", host.netns, "link", "set", HOST_IFACE, "up")
        self.hosts[name] = host
        return host

    # -- what a test does to a cable -----------------------------------------------------------

    def unplug(self, host: Host) -> None:
        """Pull the cable at the switch: the host's interface loses its carrier."""
        self._ip("-n", self.switch, "link", "set", host.port, "down")

    def black_hole(self, host: Host) -> None:
        """Drop every frame to and from the host in the switch, its link staying up."""
        # A disabled bridge port forwards nothing either way and keeps its carrier; with STP
        # off the kernel never moves a port out of this state by itself.
        self._run_tool("bridge", "link", "set", "dev", host.port, "state", "disabled")

    def reconnect(self, host: Host) -> None:
        """Plug the cable back in and let the switch forward the host's frames again."""
        self._ip("-n", self.switch, "link", "set", host.port, "up")
        self._run_tool("bridge", "link", "set", "dev", host.port, "state", "forwarding")

    def carrier(self, host: Host) -> bool:
        """True while the host's own interface has a link (what its kernel can see)."""
        path = f"/sys/class/net/{HOST_IFACE}/carrier"
        done = subprocess.run(
            host.argv("cat", path), capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip() == "1"

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what still runs in the LAN's namespaces, delete them and the test's port."""
        if not self._started:
            return
        self._started = False
        ip = tool("ip")
        for netns in reversed(self._namespaces):
            pids = subprocess.run(
                [ip, "netns", "pids", netns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:  # only what this LAN's namespaces hold: processes a test started
                logger.warning("killing pid %s left in namespace %s", pid, netns)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            done = subprocess.run(
                [ip, "netns", "delete", netns], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                logger.error("could not delete namespace %s: %s", netns, done.stderr.strip())
        self._namespaces.clear()
        # Deleting the switch's namespace destroys the veth pair too, but not at once.
        subprocess.run(
            [ip, "link", "delete", self.uplink], capture_output=True, text=True, check=False
        )

    def __enter__(self) -> Lan:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------

    def _add_namespace(self, netns: str) -> None:
        self._ip("netns", "add", netns)
        self._namespaces.append(netns)

    def _ip(self, *args: str) -> str:
        return _run(tool("ip"), *args)

    def _run_tool(self, name: str, *args: str) -> str:
        return _run(tool("ip"), "netns", "exec", self.switch, tool(name), *args)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A /24 of SUBNETS that no address or route of this machine touches."""
        text = _run(tool("ip"), "-4", "route", "show", "table", "all")
        text += _run(tool("ip"), "-4", "-o", "addr", "show")
        taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for word in text.split():
            try:
                taken.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
        candidates = list(SUBNETS.subnets(new_prefix=24))
        start = secrets.randbelow(len(candidates))
        for candidate in candidates[start:] + candidates[:start]:
            if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
                return candidate
        raise NetnsUnavailableError(f"no free /24 left in {SUBNETS} on this machine")


@dataclass
class NetnsDynsecBroker(DynsecBroker):
    """A dynamic security Mosquitto run inside a host's namespace, listening on its address."""

    netns: str = ""

    def start(self) -> NetnsDynsecBroker:
        """Start in the namespace and wait for the port (over the LAN)."""
        config = self.write_config()
        self.process = subprocess.Popen(
            [tool("ip"), "netns", "exec", self.netns, "mosquitto", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.host, self.port)
        except BrokerError as error:
            self.stop()
            raise BrokerError(f"{error}; broker log:\n{self.log_tail()}") from error
        return self
