"""A real Mosquitto with the dynamic security plugin (JSON made by `mosquitto_ctrl dynsec init`)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import MosquittoBroker

PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)


def plugin_path() -> str | None:
    """The dynamic security plugin on this machine, or None."""
    return next((path for path in PLUGIN_PATHS if Path(path).is_file()), None)


def master_role_commands(prefix: str, admin: str) -> list[list[str]]:
    """`mosquitto_ctrl dynsec` argument lists giving `admin` the master's topic rights."""
    acls = [
        ("subscribePattern", f"{prefix}/#"),
        ("publishClientSend", f"{prefix}/_master/#"),
        ("publishClientSend", f"{prefix}/+/cmd/#"),
    ]
    commands = [["createRole", "picluster-master"]]
    commands += [["addRoleACL", "picluster-master", kind, topic, "allow"] for kind, topic in acls]
    commands.append(["addClientRole", admin, "picluster-master"])
    return commands


@dataclass
class DynsecBroker(MosquittoBroker):
    """A broker whose users and ACLs live in the plugin's JSON, managed over `$CONTROL`.

    `admin` / `admin_password` are given the plugin's admin role at init (as the shipped head
    configuration does for the master's user), then the master's topic rights.
    """

    admin: str = "picluster-master"
    admin_password: str = field(default="admin-secret", repr=False)
    prefix: str = "cluster"

    @property
    def dynsec_file(self) -> Path:
        """The plugin's JSON."""
        return self.workdir / "dynamic-security.json"

    def write_config(self) -> Path:
        """The base config without password file or ACL, plus the plugin and its JSON."""
        plugin = plugin_path()
        if plugin is None:
            # Debian's mosquitto package ships it and the test command installs that: a
            # missing plugin is a failure to see, never a reason to skip.
            raise RuntimeError(
                "mosquitto_dynamic_security.so is not installed: run the README's test command"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.dynsec_file.exists():
            subprocess.run(
                [
                    "mosquitto_ctrl",
                    "dynsec",
                    "init",
                    str(self.dynsec_file),
                    self.admin,
                    self.admin_password,
                ],
                check=True,
                capture_output=True,
            )
        self.users = None
        self.acl = None
        config = super().write_config()
        lines = config.read_text().splitlines()
        lines = [line for line in lines if line != "allow_anonymous true"]
        lines += [
            "allow_anonymous false",
            f"plugin {plugin}",
            f"plugin_opt_config_file {self.dynsec_file}",
        ]
        config.write_text("\n".join(lines) + "\n")
        return config

    def ctrl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `mosquitto_ctrl dynsec ...` as the admin against this broker."""
        return subprocess.run(
            [
                "mosquitto_ctrl",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-u",
                self.admin,
                "-P",
                self.admin_password,
                "dynsec",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HOME": str(self.workdir)},  # no user's mosquitto_ctrl options
        )

    def start(self) -> DynsecBroker:
        """Start, then give the admin the master's topic rights (once per JSON file)."""
        fresh = not self.dynsec_file.exists()
        super().start()
        if fresh:
            for command in master_role_commands(self.prefix, self.admin):
                self.ctrl(*command)
        return self

    def admin_url(self) -> str:
        """`mqtt://admin@host:port` (the password goes separately)."""
        return f"mqtt://{self.admin}@{self.host}:{self.port}"
