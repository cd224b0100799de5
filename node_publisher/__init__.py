"""The picluster node agent: collects metrics and publishes them over MQTT."""

from __future__ import annotations

import sys
from pathlib import Path

DISTRIBUTION = "picluster"


def installed_version() -> str:
    """The installed distribution's version, read from its METADATA without importlib.metadata.

    importlib.metadata brings zipfile, csv and email with it: about 2 MiB of the agent's
    resident memory for one string. It is used only when no `.dist-info` is found directly.
    """
    for entry in sys.path:
        folder = Path(entry or ".")
        if not folder.is_dir():
            continue
        for metadata_file in sorted(folder.glob(f"{DISTRIBUTION}-*.dist-info/METADATA")):
            version = _metadata_version(metadata_file)
            if version is not None:
                return version
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def _metadata_version(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    return None  # the headers end at the first blank line
                key, sep, value = line.partition(":")
                if sep and key == "Version":
                    return value.strip()
    except OSError:
        return None
    return None


__version__ = installed_version()
