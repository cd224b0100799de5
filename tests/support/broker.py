"""A real Mosquitto on a free loopback port, configured per test, stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 10.0


class BrokerError(RuntimeError):
    """The broker could not be started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once a TCP connect to host:port succeeds; raise BrokerError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"nothing answered on {host}:{port} within {timeout_s} s")


@dataclass
class MosquittoBroker:
    """One Mosquitto process with a generated config in `workdir`.

    `users` turns on authentication (password file made with mosquitto_passwd); `acl`
    is the ACL file's text; `persistence` keeps a store in `workdir` across restarts.
    """

    workdir: Path
    users: Mapping[str, str] | None = None
    acl: str | None = None
    persistence: bool = False
    extra_config: str = ""
    tls_listener: Mapping[str, Path] | None = None  # cafile, certfile, keyfile
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port` of the plain listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the broker writes its log."""
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        """Write mosquitto.conf (and password/ACL files) into workdir; return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            # Mosquitto run as root drops to the 'mosquitto' user before reading the
            # password and ACL files; the test files belong to whoever runs the tests.
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} {self.host}",
            f"log_dest file {self.log_path}",
            "log_type all",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 1"]
        if self.users is not None:
            password_file = self.workdir / "passwd"
            password_file.write_text("")
            for name, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), name, password], check=True
                )
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        if self.tls_listener is not None:
            self.tls_port = self.tls_port or free_port()
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls_listener['cafile']}",
                f"certfile {self.tls_listener['certfile']}",
                f"keyfile {self.tls_listener['keyfile']}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> MosquittoBroker:
        """Start the broker and wait until it accepts connections."""
        config = self.write_config()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.host, self.port)
            if self.tls_port is not None:
                wait_for_port(self.host, self.tls_port)
        except BrokerError as error:
            self.stop()
            raise BrokerError(f"{error}; broker log:\n{self.log_tail()}") from error
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Stop the broker by its PID with `sig`, killing it if it will not go in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop (with `sig`) and start again on the same port with the same config."""
        self.stop(sig)
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
