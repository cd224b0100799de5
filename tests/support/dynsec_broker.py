"""A real Mosquitto with the dynamic security plugin, its first JSON the one the head ships.

The JSON is written before the broker starts by `dynsec_init` (what `install-head.sh` runs):
the master's user with the plugin's admin role and the master's topic rights. Giving those
rights over `$CONTROL` after the start, as that same user, can hang: the plugin disconnects a
client whose roles change, before `mosquitto_ctrl` reads the answer.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from master_service.enrollment.dynsec_init import MASTER_USER, initial_config
from tests.support.broker import MosquittoBroker

PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
)


def plugin_path() -> str | None:
    """The dynamic security plugin on this machine, or None."""
    return next((path for path in PLUGIN_PATHS if Path(path).is_file()), None)


@dataclass
class DynsecBroker(MosquittoBroker):
    """A broker whose users and ACLs live in the plugin's JSON, managed over `$CONTROL`.

    `admin` / `admin_password` (the master's user) have the plugin's admin role and the
    master's topic rights from the start, as on a head set up by install-head.sh.
    """

    admin: str = MASTER_USER
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
            first = initial_config(self.admin_password, prefix=self.prefix)
            self.dynsec_file.write_text(json.dumps(first, indent=2))
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
            timeout=30,  # a broker that never answers fails the test, not the whole run
            env={**os.environ, "HOME": str(self.workdir)},  # no user's mosquitto_ctrl options
        )

    def start(self) -> DynsecBroker:
        """Start the broker (typed as this class, for `.ctrl` and `.admin_url`)."""
        super().start()
        return self

    def admin_url(self) -> str:
        """`mqtt://admin@host:port` (the password goes separately)."""
        return f"mqtt://{self.admin}@{self.host}:{self.port}"
