"""What the master serves a new node: a bootstrap script and picluster's source with installer.

`/install/picluster.tar.gz` holds what `deploy/install-node.sh --source DIR` installs from
(pyproject.toml, README.md and the packages, as deploy/installer-lib.sh's SOURCE_PATHS) plus
the node's deploy/ files, so a node on the LAN needs nothing from the head but one command.
It is made once per master process from the source tree the master runs from; a master
installed without its source tree answers 404 instead.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Final

import master_service

logger = logging.getLogger(__name__)

ARCHIVE_NAME: Final = "picluster.tar.gz"
SOURCE_PATHS: Final = ("pyproject.toml", "README.md", "cluster_protocol", "node_publisher")
PACKAGE_PATHS: Final = ("master_service",)
DEPLOY_FILES: Final = (
    "install-node.sh",
    "installer-lib.sh",
    "picluster-node.service",
    "node.toml.example",
)

_lock = threading.Lock()
_built: dict[str, Path] = {}


class InstallerMissingError(RuntimeError):
    """This master has no source tree to serve."""


def source_root() -> Path:
    """The picluster checkout the master runs from (with pyproject.toml and deploy/)."""
    root = Path(master_service.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "deploy" / "install-node.sh").is_file():
        return root
    raise InstallerMissingError(
        f"no picluster source tree beside {root}: this master cannot serve the node installer"
    )


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info


def source_archive() -> Path:
    """The picluster source and the node installer as one .tar.gz (made on first use)."""
    with _lock:
        if "archive" in _built:
            return _built["archive"]
        root = source_root()
        target = Path(tempfile.mkdtemp(prefix="picluster-install-")) / ARCHIVE_NAME
        with tarfile.open(target, "w:gz") as archive:
            for name in (*SOURCE_PATHS, *PACKAGE_PATHS):
                archive.add(root / name, arcname=f"picluster/{name}", filter=_skip_caches)
            for name in DEPLOY_FILES:
                archive.add(root / "deploy" / name, arcname=f"picluster/deploy/{name}")
        _built["archive"] = target
        logger.info("serving picluster's source from %s to new nodes", root)
        return target


def install_file(name: str) -> Path:
    """The file `/install/<name>` serves (only the source archive)."""
    if name == ARCHIVE_NAME:
        return source_archive()
    raise InstallerMissingError(f"no install file {name!r} here (only {ARCHIVE_NAME})")


BOOTSTRAP: Final = """#!/bin/sh
# picluster node bootstrap, served by the master at /install/node.sh. It fetches picluster
# and its node installer from the master named by --enroll and runs the installer with every
# argument given here:
#   curl -fsSL http://HEAD:8080/install/node.sh | sudo sh -s -- --enroll http://HEAD:8080 TOKEN
set -eu
master=""
previous=""
for argument in "$@"; do
    if [ "$previous" = "--enroll" ]; then master="$argument"; fi
    previous="$argument"
done
if [ -z "$master" ]; then
    echo "node.sh: give --enroll MASTER_URL TOKEN (cluster-master nodes add prints it)" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -fsSL -o "$work/@ARCHIVE@" "$master/install/@ARCHIVE@"
tar -xzf "$work/@ARCHIVE@" -C "$work"
bash "$work/picluster/deploy/install-node.sh" --source "$work/picluster" "$@"
"""


def bootstrap_script() -> str:
    """The script `/install/node.sh` serves (checks first that there is a source to serve)."""
    source_root()
    return BOOTSTRAP.replace("@ARCHIVE@", ARCHIVE_NAME)
